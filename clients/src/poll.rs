//! Long-poll transport: `GET /v1/poll?channel=..&cursor=..&timeout=..`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    client::{read_json, GatewayClient},
    error::{Error, Result},
    protocol::{Envelope, MultiPosition, PositionError},
};

/// The gateway's default long-poll hold, in seconds.
pub const DEFAULT_POLL_TIMEOUT_SECS: u64 = 25;

/// The longest hold the gateway grants, in seconds.
pub const MAX_POLL_TIMEOUT_SECS: u64 = 55;

/// `{"messages":[...],"cursor":"k3f9a2:18","recovered":true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    pub messages: Vec<Envelope>,
    /// The multi-channel position to send with the next poll.
    pub cursor: String,
    /// `false`: the cursor sent could not be honoured; `cursor` is where delivery continues.
    pub recovered: bool,
}

impl PollResponse {
    /// The cursor decoded (it names one position per channel polled).
    pub fn position(&self) -> Result<MultiPosition, PositionError> {
        MultiPosition::parse(&self.cursor)
    }
}

impl GatewayClient {
    /// One long-poll. `cursor: None` means "from now"; `timeout_secs: None`
    /// leaves the gateway's default (25 s). The request is bounded by the
    /// hold plus `timeouts.poll_grace`.
    pub async fn poll<S: AsRef<str>>(
        &self,
        channels: &[S],
        cursor: Option<&str>,
        timeout_secs: Option<u64>,
    ) -> Result<PollResponse> {
        let mut url = self.channel_url("v1/poll", channels);
        {
            let mut q = url.query_pairs_mut();
            if let Some(c) = cursor {
                q.append_pair("cursor", c);
            }
            if let Some(t) = timeout_secs {
                q.append_pair("timeout", &t.to_string());
            }
        }
        let hold = timeout_secs
            .unwrap_or(DEFAULT_POLL_TIMEOUT_SECS)
            .min(MAX_POLL_TIMEOUT_SECS);
        let wait = Duration::from_secs(hold) + self.timeouts().poll_grace;
        let fut = async {
            let resp = self.http().get(url).timeout(wait).send().await?;
            read_json(resp).await
        };
        tokio::time::timeout(wait, fut)
            .await
            .map_err(|_| Error::timeout("long-polling", wait))?
    }
}
