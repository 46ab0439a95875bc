//! `ringbroker cluster info`: Metadata, or DescribeCluster when the broker offers it (it also
//! says whether a broker is fenced).

use super::admin::{check, versions, BrokerInfo};
use super::output::{print_fields, print_json, print_section, Format, Table};
use super::Context;
use anyhow::Result;
use kafka_protocol::messages::{ApiKey, DescribeClusterRequest, DescribeClusterResponse};
use serde_json::json;

struct Node {
    broker: BrokerInfo,
    fenced: bool,
}

pub async fn info(mut c: Context) -> Result<()> {
    let (source, cluster_id, controller_id, nodes) =
        if c.admin.supports(ApiKey::DescribeCluster).await? {
            let (_, r): (_, DescribeClusterResponse) = c
                .admin
                .call(ApiKey::DescribeCluster, versions::DESCRIBE_CLUSTER, |_| {
                    DescribeClusterRequest::default()
                })
                .await?;
            check(
                r.error_code,
                || "DescribeCluster".to_string(),
                r.error_message.as_ref(),
            )?;
            let nodes: Vec<Node> = r
                .brokers
                .iter()
                .map(|b| Node {
                    broker: BrokerInfo {
                        node_id: b.broker_id.0,
                        host: b.host.to_string(),
                        port: b.port,
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                    fenced: b.is_fenced,
                })
                .collect();
            (
                "DescribeCluster",
                Some(r.cluster_id.to_string()),
                r.controller_id.0,
                nodes,
            )
        } else {
            let m = c.admin.metadata(Some(&[])).await?;
            let nodes = m
                .brokers
                .values()
                .map(|b| Node {
                    broker: b.clone(),
                    fenced: false,
                })
                .collect();
            ("Metadata", m.cluster_id, m.controller_id, nodes)
        };
    let mut nodes = nodes;
    nodes.sort_by_key(|n| n.broker.node_id);
    match c.format {
        Format::Json => print_json(&json!({
            "cluster_id": cluster_id,
            "controller_id": controller_id,
            "source": source,
            "brokers": nodes.iter().map(|n| json!({
                "node_id": n.broker.node_id,
                "host": n.broker.host,
                "port": n.broker.port,
                "rack": n.broker.rack,
                "fenced": n.fenced,
            })).collect::<Vec<_>>(),
        })),
        Format::Text => {
            print_section("CLUSTER");
            print_fields(&[
                ("ID", cluster_id.unwrap_or_else(|| "-".to_string())),
                ("CONTROLLER", controller_id.to_string()),
            ]);
            super::output::emit("\n");
            print_section("BROKERS");
            let mut t = Table::new(&["ID", "HOST", "PORT", "RACK"]);
            for n in &nodes {
                let mut id = n.broker.node_id.to_string();
                if n.broker.node_id == controller_id {
                    id.push('*');
                }
                if n.fenced {
                    id.push_str(" (fenced)");
                }
                t.row(vec![
                    id,
                    n.broker.host.clone(),
                    n.broker.port.to_string(),
                    n.broker.rack.clone().unwrap_or_else(|| "-".to_string()),
                ]);
            }
            t.print();
        }
    }
    Ok(())
}
