//! The data plane: listeners accept connections (`server`), each request
//! runs through `handler` (checks → router → plugin phases → upstream
//! (`forward`, with retries) → response phases), with the forwarding headers of `forwarded`.

pub mod aggregate;
pub mod forward;
pub mod forwarded;
pub mod framing;
pub mod grpc_web;
pub mod handler;
pub mod server;
pub mod transcode;
pub mod websocket;
