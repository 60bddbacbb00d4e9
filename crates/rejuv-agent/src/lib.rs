//! rejuv agent: /proc collector, instance supervisor, rejuvenation actions, agent HTTP API.
