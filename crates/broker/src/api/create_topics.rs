//! CreateTopics: validated and placed by shard 0, persisted, then opened by each owner. A
//! topic's configs are kept with it, so their size is bounded here first; a topic named twice
//! gets INVALID_REQUEST for each entry (as in Kafka).

use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::errors;
use crate::limits::{REQUEST_TOPICS_MAX, TOPIC_CONFIGS_BYTES_MAX};
use crate::shard::{self, NewTopic};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request) -> Result<Outcome, Outcome> {
    let body: CreateTopicsRequest = decode_body(&mut req)?;
    let v = req.version;
    refuse_over(
        "CreateTopics",
        "topics",
        body.topics.len(),
        REQUEST_TOPICS_MAX,
    )?;
    let mut times_named = std::collections::HashMap::new();
    for t in &body.topics {
        *times_named.entry(&t.name.0).or_insert(0usize) += 1;
    }
    let configs_bytes = |t: &kafka_protocol::messages::create_topics_request::CreatableTopic| {
        t.configs
            .iter()
            .map(|c| c.name.len() + c.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
    };
    let refused: Vec<Option<(i16, String)>> = body
        .topics
        .iter()
        .map(|t| {
            let bytes = configs_bytes(t);
            if times_named[&t.name.0] > 1 {
                Some((
                    errors::INVALID_REQUEST,
                    "topic named more than once in one request".to_string(),
                ))
            } else if bytes > TOPIC_CONFIGS_BYTES_MAX {
                Some((
                    errors::INVALID_CONFIG,
                    format!("{bytes} bytes of configs, more than {TOPIC_CONFIGS_BYTES_MAX}"),
                ))
            } else {
                None
            }
        })
        .collect();
    let requested: Vec<NewTopic> = body
        .topics
        .iter()
        .zip(&refused)
        .filter(|(_, refused)| refused.is_none())
        .map(|(t, _)| NewTopic {
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
    let mut created = shard::create_topics(requested, body.validate_only)
        .await
        .into_iter();
    let topics = body
        .topics
        .into_iter()
        .zip(refused)
        .map(|(t, refused)| {
            let result = match refused {
                Some(error) => Err(error),
                None => created.next().expect("one result per topic asked"),
            };
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
