//! herald-bench as a library, so its scenarios can be smoke-tested against an in-process server.

pub mod load;
pub mod procstat;
