//! The clock exchange answer (`/api/v1/time`).

use serde::{Deserialize, Serialize};

/// When the agent received the request and sent the answer, so the client
/// can bound the agent's clock offset NTP-style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeAnswer {
    /// The agent's node name.
    pub node: String,
    /// Unix ns on the agent's clock when the request arrived.
    pub receive_ns: i64,
    /// Unix ns on the agent's clock just before the answer was sent.
    pub send_ns: i64,
}
