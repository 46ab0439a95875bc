//! `ringbroker topic|group|cluster|produce|consume`: an admin CLI in the style of Redpanda's
//! `rpk`, speaking the Kafka protocol, so it works against any Kafka-compatible broker.
//!
//! - [`admin`]: connections, routing (controller, leader, coordinator), ApiVersions
//!   negotiation, Kafka error codes by name.
//! - [`topic`], [`group`], [`cluster`]: the admin commands.
//! - [`records`]: `produce` (stdin lines) and `consume` (values on stdout).
//! - [`output`]: tables for people, JSON (`--format json`) for scripts.
//!
//! Every command runs on one thread with its own ring (the shared [`crate::client`]). Any
//! error, including one a broker answers for one item of several, ends with exit status 1.

mod admin;
mod cluster;
mod group;
mod output;
mod records;
mod topic;
pub mod user;

use anyhow::Result;
use clap::{Args, Subcommand};
pub use output::Format;

/// Where to connect and how to print; accepted after any subcommand.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Comma-separated host:port of brokers to bootstrap from (the first that accepts).
    #[arg(
        short = 'b',
        long,
        env = "RINGBROKER_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,
    /// `text` (tables) or `json` (stable field names; produce/consume: one object per line).
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    pub format: Format,
    /// How to reach a secured broker (TLS, SASL).
    #[command(flatten)]
    pub security: crate::client::SecurityArgs,
}

#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: topic::TopicCommand,
}

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: group::GroupCommand,
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Cluster id, controller and brokers (Metadata; DescribeCluster when the broker has it).
    Info,
}

pub fn topic(args: TopicArgs) -> Result<()> {
    run(args.common, move |c| topic::run(c, args.command))
}

pub fn group(args: GroupArgs) -> Result<()> {
    run(args.common, move |c| group::run(c, args.command))
}

pub fn cluster(args: ClusterArgs) -> Result<()> {
    run(args.common, move |c| match args.command {
        ClusterCommand::Info => cluster::info(c),
    })
}

pub fn produce(args: records::ProduceArgs) -> Result<()> {
    run(args.common.clone(), move |c| records::produce(c, args))
}

pub fn consume(args: records::ConsumeArgs) -> Result<()> {
    run(args.common.clone(), move |c| records::consume(c, args))
}

pub use records::{ConsumeArgs, ProduceArgs};

/// What every command gets: its connections and the output format.
pub struct Context {
    pub admin: admin::Admin,
    pub format: Format,
}

/// Connects and runs one command on a ring of this thread.
fn run<F, Fut>(common: Common, command: F) -> Result<()>
where
    F: FnOnce(Context) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    let security = common.security.resolve()?;
    crate::bench::block_on(async move {
        let admin = admin::Admin::connect(&common.brokers, security).await?;
        command(Context {
            admin,
            format: common.format,
        })
        .await
    })
}
