//! The data plane: listeners accept connections (`server`; HTTP/1.1 in
//! `http1`, HTTP/2 and upgrades through hyper), each request
//! runs through `handler` (checks → router → plugin phases → upstream
//! (`forward`, with retries) → response phases), with the forwarding headers of `forwarded`.

pub mod aggregate;
pub mod forward;
pub mod forwarded;
pub mod framing;
pub mod grpc_web;
pub mod handler;
pub mod http1;
pub mod server;
pub mod transcode;
pub mod websocket;
