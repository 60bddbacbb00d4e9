//! Deterministic simulation of the rejuv core against simulated servers, clock and faults.
