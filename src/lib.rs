//! kakoi runs untrusted code as a bare Linux process inside fresh namespaces.
#![deny(unsafe_code)]

pub mod cli;
pub mod host;
pub mod sandbox;
