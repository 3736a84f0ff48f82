//! The data plane: listeners accept connections (`server`), each request
//! runs through `handler` (checks → router → plugin phases → upstream →
//! response phases), with the forwarding headers of `forwarded`.

pub mod forwarded;
pub mod framing;
pub mod handler;
pub mod server;
