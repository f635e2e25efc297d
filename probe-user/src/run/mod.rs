//! `pushscope run`: load + observe + gate + report in one command.

pub mod figures;
