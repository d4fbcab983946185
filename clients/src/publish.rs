//! HTTP publish: `POST /v1/publish`, single or batch.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    client::{read_json, GatewayClient},
    error::{Error, GatewayError, Result},
    protocol::{ApiErrorBody, Position},
};

/// One message to publish: `{"channel":..,"data":..,"id":..,"publisher":..}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    pub channel: String,
    pub data: Value,
    /// Idempotency id: a repeat within the history window is not delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

impl PublishRequest {
    pub fn new(channel: impl Into<String>, data: Value) -> Self {
        Self {
            channel: channel.into(),
            data,
            id: None,
            publisher: None,
        }
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn with_publisher(mut self, publisher: impl Into<String>) -> Self {
        self.publisher = Some(publisher.into());
        self
    }
}

/// `{"channel":"files:alice","offset":8,"epoch":"k3f9a2","duplicate":false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    #[serde(default)]
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
    /// True when the id was already accepted; `offset` is then the original one.
    #[serde(default)]
    pub duplicate: bool,
}

impl PublishResult {
    pub fn position(&self) -> Position {
        Position::new(self.epoch.clone(), self.offset)
    }
}

/// One entry of a batch answer: the result, or that message's refusal.
pub type BatchResult = Result<PublishResult, GatewayError>;

#[derive(Serialize)]
struct BatchBody<'a> {
    messages: &'a [PublishRequest],
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BatchItem {
    Ok(PublishResult),
    Err(ApiErrorBody),
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<BatchItem>,
}

impl GatewayClient {
    /// Publishes one message (bounded by `timeouts.request`; with the client's
    /// publish key, if set). A refusal is [`Error::Gateway`] carrying the
    /// gateway's code and message.
    pub async fn publish(&self, req: &PublishRequest) -> Result<PublishResult> {
        self.post_publish(req).await
    }

    /// Publishes a batch `{"messages":[...]}`; the results come in request order.
    /// A refusal of the whole batch is `Err`; a refusal of one message, if the
    /// gateway reports them per message, is that entry's `Err`.
    pub async fn publish_batch(&self, reqs: &[PublishRequest]) -> Result<Vec<BatchResult>> {
        let answer: BatchAnswer = self.post_publish(&BatchBody { messages: reqs }).await?;
        if answer.results.len() != reqs.len() {
            return Err(Error::Protocol(format!(
                "batch of {} answered with {} results",
                reqs.len(),
                answer.results.len()
            )));
        }
        Ok(answer
            .results
            .into_iter()
            .zip(reqs)
            .map(|(item, req)| match item {
                BatchItem::Ok(r) => Ok(r),
                BatchItem::Err(b) => Err(GatewayError {
                    status: None,
                    code: b.error.code,
                    message: b.error.message,
                    channel: Some(req.channel.clone()),
                }),
            })
            .collect())
    }

    async fn post_publish<B: Serialize + ?Sized, T: serde::de::DeserializeOwned>(
        &self,
        body: &B,
    ) -> Result<T> {
        let wait = self.timeouts().request;
        let url = self.endpoint("v1/publish");
        let fut = async {
            let mut req = self.http().post(url).json(body).timeout(wait);
            if let Some(key) = self.publish_key() {
                req = req.bearer_auth(key);
            }
            let resp = req.send().await?;
            read_json(resp).await
        };
        tokio::time::timeout(wait, fut)
            .await
            .map_err(|_| Error::timeout("publishing", wait))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_encode_optional_fields_only_when_set() {
        let r = PublishRequest::new("files:alice", json!({"hello":1}));
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"channel":"files:alice","data":{"hello":1}})
        );
        let r = r.with_id("evt-1").with_publisher("svc");
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"channel":"files:alice","data":{"hello":1},"id":"evt-1","publisher":"svc"})
        );
        let b = serde_json::to_value(BatchBody { messages: &[r] }).unwrap();
        assert_eq!(b["messages"][0]["id"], "evt-1");
    }

    #[test]
    fn batch_answers_decode_results_and_per_message_errors() {
        let a: BatchAnswer = serde_json::from_value(json!({"results":[
            {"channel":"c","offset":8,"epoch":"k3f9a2","duplicate":false},
            {"error":{"code":"bad_channel","message":"no"}},
        ]}))
        .unwrap();
        assert!(matches!(&a.results[0], BatchItem::Ok(r) if r.offset == 8 && !r.duplicate));
        assert!(matches!(&a.results[1], BatchItem::Err(e) if e.error.code == "bad_channel"));
    }
}
