//! An HTTP service that ages on purpose, and a bounded load generator, for rejuv demos and tests.
