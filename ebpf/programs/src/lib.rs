//! Library target so the agent can declare a build-dependency on this crate (cargo then
//! rebuilds the agent when the kernel programs change). The programs live in the binary.
#![no_std]
