//! `/etc/runner-agent/agent.toml`: strict parsing into the resolved [`Config`].
//!
//! The model in [`model`] is what the rest of the agent uses; parsing, the error report
//! (file:line:column, caret, `hint:`) and the cross-field rules live beside it.

mod model;

pub use model::*;
