//! kakoi runs untrusted code as a bare Linux process inside fresh namespaces.
#![deny(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod env;
pub mod host;
pub mod lint;
pub mod mcp;
pub mod result;
pub mod sandbox;
pub mod server;
pub mod spec;

pub use backend::{Backend, BackendError};
pub use result::{RunResult, Status};
pub use sandbox::{Sandbox, SandboxConfig};
pub use spec::RunSpec;
