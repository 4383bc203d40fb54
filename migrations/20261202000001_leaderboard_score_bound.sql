-- Every stored leaderboard score within ±(2^53 - 1) (issue 22: one rule for every store).
--
-- Redis keeps sorted-set scores as doubles (2^53 + 1 rounds to 2^53); PostgreSQL's BIGINT
-- would keep a larger sum exact (and the i64 range beyond that is an overflow). A sum
-- past the bound would make the two stores disagree, so both refuse it: here an upsert
-- that would take a score past it fails with SQLSTATE 23514 (check_violation), which the
-- leaderboard sink treats as permanent and isolates to the one record that causes it
-- (dead-lettered for `leaderboard-manager`). The Redis sink's script refuses the same
-- increment. The bound equals the ingest limit on a single event's score
-- (`MAX_EXACT_SCORE` in src/event.rs).
--
-- NOT VALID: rows written before this constraint are not scanned (no long lock on a
-- large table); every new or updated row is checked.
ALTER TABLE leaderboard_scores
    ADD CONSTRAINT leaderboard_scores_score_exact
    CHECK (score BETWEEN -9007199254740991 AND 9007199254740991) NOT VALID;
