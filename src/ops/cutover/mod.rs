//! `gamestream cutover plan|apply|verify`: taking over from the old pipeline.
//!
//! The old pipeline (a Go ingestion service and three Python consumers) leaves behind a
//! database adopted by `gamestream migrate`, a Redis of `player_stats:*` hashes and
//! `leaderboard:*` sorted sets, and three consumer groups' committed offsets. What of it
//! is right, and so what gamestream takes over (README, "Cut-over from the old pipeline"):
//!
//! | old state | right? | what `apply` does |
//! |---|---|---|
//! | offsets of `event-logger-group` | yes | seeds `event-logger` |
//! | offsets of `stats-aggregator-group` | yes | seeds `stats-aggregator` and `stats-aggregator-redis` |
//! | offsets of `leaderboard-manager-group` | yes | seeds `leaderboard-manager` and `leaderboard-manager-redis` |
//! | `events` | yes (primary key on `event_id`) | kept |
//! | Redis `player_stats:*` (HINCRBY per event) | yes | kept; imported into `player_statistics` |
//! | `player_statistics` (overwritten by partial counts) | no | replaced by the import |
//! | Redis `leaderboard:{game}:alltime` (ZINCRBY) | yes | kept; imported into `leaderboard_scores` |
//! | Redis `leaderboard:{game}:daily`/`weekly` (never rolled over) | no | replaced: rebuilt from `events` where it covers the period, else empty |
//! | `leaderboards` (all-time top 100) | yes | kept; refreshed by the daemon |
//!
//! ```text
//! plan    groups' offsets (OffsetFetch) + Postgres + Redis + broker ──► what apply would do (changes nothing)
//! apply   refuse while a daemon or an old consumer runs ─► BEGIN
//!           sink_offsets ◄── groups' offsets        player_statistics ◄── player_stats:* hashes
//!           leaderboard_scores ◄── alltime sets + days/weeks from events (± the logger/manager offset gap)
//!           Redis daily/weekly boards replaced      cutover_adoptions ◄── what was done
//!         COMMIT ─► Redis offsets hashes marked "adopted" (the Redis sinks keep the keys)
//! verify  events ⇄ player_statistics ⇄ player_stats:*, events ⇄ leaderboard_scores ⇄ alltime sets ─► differences, exit 1
//! ```

mod apply;
mod import;
mod survey;
mod verify;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::config::Config;
use crate::exit::Exit;

pub use apply::{Applied, apply};
pub use survey::{GroupState, Survey, survey};
pub use verify::{Difference, Report, verify};

#[derive(Debug, Subcommand)]
pub enum CutoverAction {
    /// Read the old consumer groups' offsets, the database and Redis, and print what
    /// `apply` would adopt and from which offsets. Changes nothing.
    Plan(PlanArgs),
    /// Adopt the old pipeline's state: seed every sink's offsets from its old group,
    /// import the right totals and scores, rebuild the daily and weekly boards. Refused
    /// while a gamestream daemon or an old consumer runs; a second run changes nothing.
    Apply(ApplyArgs),
    /// Compare the stores with each other and with `events` (per-player totals, per-game
    /// all-time scores); print the differences and exit 1 if there are any.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// As for `apply`.
    #[arg(long, value_parser = super::parse_time)]
    pub events_complete_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The old `events` table is complete only from this time on (it was pruned, or the
    /// logger started after the other consumers): daily and weekly boards of earlier
    /// periods start empty. Default: complete from the first event on.
    #[arg(long, value_parser = super::parse_time)]
    pub events_complete_since: Option<DateTime<Utc>>,
    /// Seed a partition that an old group never committed at the partition's earliest
    /// offset (everything Kafka holds is applied) instead of refusing.
    #[arg(long)]
    pub allow_missing_offsets: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// At most this many differences are printed (all are counted).
    #[arg(long, default_value_t = 20)]
    pub show: usize,
}

/// Runs a `cutover` subcommand.
pub async fn command(action: CutoverAction, config: &Config) -> Exit {
    if config.shadow.enabled {
        return super::exit_code(
            "cutover",
            Err(super::OpsError::Usage(
                "`shadow.enabled` is on: a shadow compares, it does not take over; run `cutover` \
                 with the configuration of the switch (shadow off, the live database)"
                    .to_owned(),
            )),
        );
    }
    match action {
        CutoverAction::Plan(args) => {
            super::exit_code("cutover plan", plan_command(&args, config).await)
        }
        CutoverAction::Apply(args) => {
            super::exit_code("cutover apply", apply_command(&args, config).await)
        }
        CutoverAction::Verify(args) => {
            super::exit_code("cutover verify", verify_command(&args, config).await)
        }
    }
}

async fn plan_command(args: &PlanArgs, config: &Config) -> super::Result<Exit> {
    let survey = survey(config, args.events_complete_since).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&survey).expect("a survey serialises")
        );
    } else {
        print!("{}", survey.render());
    }
    Ok(Exit::Success)
}

async fn apply_command(args: &ApplyArgs, config: &Config) -> super::Result<Exit> {
    let applied = apply(
        config,
        args.allow_missing_offsets,
        args.events_complete_since,
    )
    .await?;
    print!("{}", applied.render());
    Ok(Exit::Success)
}

async fn verify_command(args: &VerifyArgs, config: &Config) -> super::Result<Exit> {
    let report = verify(config).await?;
    print!("{}", report.render(args.show));
    Ok(if report.differences.is_empty() {
        Exit::Success
    } else {
        Exit::Failure
    })
}
