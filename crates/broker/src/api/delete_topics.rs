//! DeleteTopics: by name (v1-5) or by name or id (v6). A topic named twice gets
//! INVALID_REQUEST for each repeat (as in Kafka); only distinct known names reach shard 0.

use super::{decode_body, respond, Outcome};
use crate::api::refuse_over;
use crate::errors;
use crate::limits::REQUEST_TOPICS_MAX;
use crate::shard;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use ringbroker_protocol::request::Request;

pub async fn handle(mut req: Request, conn: &crate::connection::Conn) -> Result<Outcome, Outcome> {
    let body: DeleteTopicsRequest = decode_body(&mut req)?;
    let v = req.version;
    let count = body.topics.len() + body.topic_names.len();
    refuse_over("DeleteTopics", "topics", count, REQUEST_TOPICS_MAX)?;
    let shard = shard::current();
    // (name as asked, topic id as asked, resolved name)
    let asked: Vec<(Option<TopicName>, uuid::Uuid, Option<String>)> = if v >= 6 {
        body.topics
            .into_iter()
            .map(|t| {
                let resolved = match &t.name {
                    Some(n) => Some(n.0.to_string()),
                    None => shard.topic_by_id(&t.topic_id).map(|i| i.name.clone()),
                };
                (t.name, t.topic_id, resolved)
            })
            .collect()
    } else {
        body.topic_names
            .into_iter()
            .map(|n| (Some(n.clone()), uuid::Uuid::nil(), Some(n.0.to_string())))
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    let repeated: Vec<bool> = asked
        .iter()
        .map(|(_, _, r)| r.as_ref().is_some_and(|n| !seen.insert(n.clone())))
        .collect();
    // DELETE on each topic (TOPIC_AUTHORIZATION_FAILED; an unknown id stays unknown).
    let denied: Vec<bool> = asked
        .iter()
        .map(|(_, _, r)| {
            r.as_ref().is_some_and(|n| {
                !crate::security::authorizer::on_topic(conn, crate::acl::DELETE, n)
            })
        })
        .collect();
    let names: Vec<String> = asked
        .iter()
        .zip(&repeated)
        .zip(&denied)
        .filter(|(_, &denied)| !denied)
        .map(|(pair, _)| pair)
        .filter(|(_, &repeat)| !repeat)
        .filter_map(|((_, _, r), _)| r.clone())
        .collect();
    let mut results = shard::delete_topics(names).await.into_iter();
    let responses = asked
        .into_iter()
        .zip(repeated)
        .zip(denied)
        .map(|(((name, id, resolved), repeat), denied)| {
            let outcome = match resolved {
                Some(_) if denied => Err((
                    errors::TOPIC_AUTHORIZATION_FAILED,
                    "Authorization failed.".into(),
                )),
                Some(_) if repeat => Err((
                    errors::INVALID_REQUEST,
                    "topic named twice in one request".into(),
                )),
                Some(_) => results.next().expect("one result per name"),
                None => Err((errors::UNKNOWN_TOPIC_ID, "unknown topic id".into())),
            };
            let mut r = DeletableTopicResult::default().with_name(name.clone());
            if v >= 6 {
                let id = outcome.as_ref().map(|i| i.id).unwrap_or(id);
                r = r.with_topic_id(id);
                if name.is_none() {
                    if let Ok(info) = &outcome {
                        r = r.with_name(Some(TopicName(StrBytes::from_string(info.name.clone()))));
                    }
                }
            }
            if let Err((code, message)) = outcome {
                r = r.with_error_code(code);
                if v >= 5 {
                    r = r.with_error_message(Some(StrBytes::from_string(message)));
                }
            }
            r
        })
        .collect();
    Ok(respond(
        &req,
        &DeleteTopicsResponse::default().with_responses(responses),
    ))
}
