// The library target exists so the agent can declare a build-dependency on this crate (cargo
// then rebuilds the agent when the kernel programs change); the programs are in `src/main.rs`.
#![no_std]
