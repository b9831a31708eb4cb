//! Herve's integration tests: a real server over real TCP, a real SQLite file, real
//! upstream servers and programs, and the real binary for what needs a process
//! (restarts, signals, configuration).

mod access_log;
mod acme;
mod attacks;
mod binary;
mod cli;
mod cluster;
mod concurrency;
mod contract_api;
mod csrf;
mod custom_type;
mod dashboard;
mod data_types;
mod examples;
mod hostile;
mod http_limits;
mod layers;
mod metrics;
mod middlewares;
mod openapi;
mod operations;
mod postgres;
mod process_type;
mod properties;
mod proxy_type;
mod readme;
mod routing;
mod static_type;
mod support;
mod tls;
mod tls_client;
mod upstream_server;
