//! rejuv controller: drives the core, talks to agents, the store and the load balancer, serves the API.
