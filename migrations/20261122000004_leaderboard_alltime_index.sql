-- Only the all-time board needs a ranking index.
--
-- idx_leaderboard_scores_top (migration 3) covered every row, and every score write paid
-- for it: measured per 4,500-row upsert, it made the leaderboard sink's writes about twice
-- as costly, and that sink was the busiest in the end-to-end benchmark. A day's or
-- week's board is a primary-key range (game_id, period, period_key) of that period's
-- players, which a top-N sort handles; only the all-time board grows with every player
-- ever. So the ranking index now covers all-time rows only: score descending, then
-- player id descending bytewise, the order in which Redis's ZRANGE ... REV ranks ties.
DROP INDEX IF EXISTS idx_leaderboard_scores_top;
CREATE INDEX idx_leaderboard_scores_alltime_top
    ON leaderboard_scores (game_id, score DESC, player_id COLLATE "C" DESC)
    WHERE period = 'alltime';
