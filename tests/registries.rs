//! Registries end to end over the real binary.

mod support;
