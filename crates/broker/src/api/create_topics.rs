//! CreateTopics: validated and placed by shard 0, persisted, then opened by each owner.

use super::{decode_body, respond, Outcome};
use crate::shard::{self, NewTopic};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: CreateTopicsRequest = decode_body(&mut req)?;
    let v = req.version;
    let requested: Vec<NewTopic> = body
        .topics
        .iter()
        .map(|t| NewTopic {
            name: t.name.0.to_string(),
            // Explicit replica assignments name brokers; on one node they mean one replica each.
            partitions: if t.assignments.is_empty() {
                t.num_partitions
            } else {
                t.assignments.len() as i32
            },
            replication_factor: if t.assignments.is_empty() {
                t.replication_factor
            } else {
                1
            },
            configs: t
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
                .collect(),
        })
        .collect();
    let results = shard::create_topics(requested, body.validate_only).await;
    let topics = body
        .topics
        .into_iter()
        .zip(results)
        .map(|(t, result)| {
            let mut r = CreatableTopicResult::default().with_name(t.name);
            match result {
                Ok(info) => {
                    if v >= 5 {
                        r = r
                            .with_num_partitions(info.partition_count())
                            .with_replication_factor(1)
                            .with_configs(Some(vec![]));
                    }
                    if v >= 7 {
                        r = r.with_topic_id(info.id);
                    }
                }
                Err((code, message)) => {
                    r = r
                        .with_error_code(code)
                        .with_error_message(Some(StrBytes::from_string(message)));
                }
            }
            r
        })
        .collect();
    Ok(respond(
        &req,
        &CreateTopicsResponse::default().with_topics(topics),
    ))
}
