//! CreatePartitions: grows topics (never shrinks them), through shard 0 like CreateTopics:
//! checked as Kafka's controller checks (same errors and messages), placed on the
//! least-loaded shards, persisted in the topic table, then opened by their owners. A topic
//! named more than once gets one INVALID_REQUEST answer and is not grown.

use super::{decode_body, refuse_over, respond, Outcome};
use crate::errors;
use crate::limits::REQUEST_TOPICS_MAX;
use crate::shard::{self, NewPartitions};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;
use std::collections::HashMap;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: CreatePartitionsRequest = decode_body(&mut req)?;
    refuse_over(
        "CreatePartitions",
        "topics",
        body.topics.len(),
        REQUEST_TOPICS_MAX,
    )?;
    let mut times_named: HashMap<&str, usize> = HashMap::new();
    for t in &body.topics {
        *times_named.entry(t.name.0.as_str()).or_insert(0) += 1;
    }
    // ALTER on each topic (TOPIC_AUTHORIZATION_FAILED), decided once.
    let allowed: Vec<bool> = body
        .topics
        .iter()
        .map(|t| crate::security::authorizer::on_topic(conn, crate::acl::ALTER, &t.name.0))
        .collect();
    let requested: Vec<NewPartitions> = body
        .topics
        .iter()
        .zip(&allowed)
        .filter(|(t, &allowed)| allowed && times_named[t.name.0.as_str()] == 1)
        .map(|(t, _)| t)
        .map(|t| NewPartitions {
            topic: t.name.0.to_string(),
            count: t.count,
            assignments: t.assignments.as_ref().map(|a| {
                a.iter()
                    .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            }),
        })
        .collect();
    let mut grown = shard::create_partitions(requested, body.validate_only)
        .await
        .into_iter();
    let mut answered_duplicates = std::collections::HashSet::new();
    let mut results = Vec::with_capacity(body.topics.len());
    for (t, allowed) in body.topics.iter().zip(allowed) {
        let result = if times_named[t.name.0.as_str()] > 1 {
            if !answered_duplicates.insert(t.name.0.as_str()) {
                continue;
            }
            Err((errors::INVALID_REQUEST, "Duplicate topic name.".to_string()))
        } else if !allowed {
            Err((
                errors::TOPIC_AUTHORIZATION_FAILED,
                "Authorization failed.".to_string(),
            ))
        } else {
            grown.next().expect("one result per topic asked")
        };
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        if let Err((code, message)) = result {
            r = r
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(message)));
        }
        results.push(r);
    }
    Ok(respond(
        &req,
        &CreatePartitionsResponse::default().with_results(results),
    ))
}

impl crate::stats::ErrorCodes for CreatePartitionsResponse {
    fn each_error(&self, f: &mut dyn FnMut(i16)) {
        self.results.iter().for_each(|r| f(r.error_code));
    }
}
