//! `LeaderboardRefresher`: keeps the CONTRACT `leaderboards` table (the all-time top N
//! of each game, with ranks) in step with `leaderboard_scores`.
//!
//! ```text
//! LeaderboardPgWriter ──Changed(games)──► collect ──every refresh_interval──► refresh those games
//! first tick after a start ─────────────────────────────────────────────────► refresh every game
//! Drain (graceful stop, after the sinks flushed) ───────────────────────────► refresh, reply
//! ```
//!
//! The table holds all-time boards only, as the old manager wrote it (CONTRACT), so that
//! the operators' `SELECT * FROM leaderboards WHERE game_id = ... ORDER BY rank` reads
//! one board; daily and weekly boards are served from `leaderboard_scores` and Redis (the
//! query API), and nothing here depends on the day or week.
//!
//! The old manager rewrote the top 100 on every score event; here the table is
//! derived, a few times a minute, from the complete scores, so it never disagrees with
//! them for longer than `leaderboard.refresh_interval`. A failed refresh (Postgres away)
//! is logged and counted, and its games are refreshed at the next tick: the actor does
//! not crash, since nothing is lost by waiting. Supervised by the
//! [`Supervisor`](super::supervisor) with the rest of the pipeline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::sinks::postgres::leaderboard as pg_leaderboard;

pub enum RefresherMessage {
    /// These games' scores changed (sent after each committed write).
    Changed(Vec<String>),
    /// The refresh timer fired.
    Tick,
    /// Refresh what is pending now, then reply (graceful stop).
    Drain(RpcReplyPort<()>),
}

pub struct RefresherArgs {
    pub pg: sqlx::PgPool,
    pub refresh_interval: Duration,
    pub top_n: u32,
}

pub struct LeaderboardRefresher;

pub struct RefresherState {
    pg: sqlx::PgPool,
    top_n: u32,
    /// Games changed since the last successful refresh.
    changed: BTreeSet<String>,
    /// Refresh every game next time: after a start (changes committed before a crash
    /// were never refreshed).
    everything: bool,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for LeaderboardRefresher {
    type Msg = RefresherMessage;
    type State = RefresherState;
    type Arguments = RefresherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RefresherArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(RefresherState {
            pg: args.pg,
            top_n: args.top_n,
            changed: BTreeSet::new(),
            everything: true,
            timer: Some(myself.send_interval(args.refresh_interval, || RefresherMessage::Tick)),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RefresherMessage::Changed(games) => state.changed.extend(games),
            RefresherMessage::Tick => state.refresh().await,
            RefresherMessage::Drain(reply) => {
                state.refresh().await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}

impl RefresherState {
    /// Refreshes what needs it; on failure keeps it pending for the next tick.
    async fn refresh(&mut self) {
        if !self.everything && self.changed.is_empty() {
            return;
        }
        let games: Option<Vec<String>> =
            (!self.everything).then(|| self.changed.iter().cloned().collect());
        let started = Instant::now();
        let result = pg_leaderboard::refresh(&self.pg, games.as_deref(), self.top_n).await;
        let elapsed = started.elapsed();
        match result {
            Ok(rows) => {
                metrics::histogram!("gamestream_leaderboard_refresh_duration_seconds")
                    .record(elapsed.as_secs_f64());
                metrics::counter!("gamestream_leaderboard_refresh_rows_total").increment(rows);
                tracing::debug!(games = games.as_ref().map_or(0, Vec::len), all = self.everything, rows, elapsed = ?elapsed, "leaderboards refreshed");
                self.changed.clear();
                self.everything = false;
            }
            Err(e) => {
                metrics::counter!("gamestream_leaderboard_refresh_errors_total").increment(1);
                tracing::warn!(error = %e, "refreshing the leaderboards table failed; will retry at the next tick");
            }
        }
    }
}
