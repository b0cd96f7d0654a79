//! The edge: where the coordinator meets the network. The HTTP API server and its accept loop, TLS, the MQTT bus client, and the embedded broker with its mTLS front.

pub mod broker;
pub mod broker_config;
pub mod bus;
pub mod exec;
pub mod http;
pub mod logs;
pub mod mqtt;
pub mod mqtt_front;
pub mod serve;
pub mod sessions;
pub mod tcp_liveness;
pub mod tls;
