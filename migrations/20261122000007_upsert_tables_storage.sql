-- Cheaper upserts for the two counting tables (measured with `gamestream bench`; the
-- figures are in the README's Benchmarks section).
--
-- player_statistics: an update changes no indexed column, so with free space on its page
-- PostgreSQL makes it a HOT update (no new primary-key entry). At the default fillfactor
-- of 100 pages are full and every update also inserted into the primary key.
ALTER TABLE player_statistics SET (fillfactor = 70);

-- leaderboard_scores is gamestream's own table (not in the contract): its keys are ids
-- and period names compared bytewise (the ranking index already orders player ids with
-- COLLATE "C"). Under a linguistic collation every B-tree comparison of the four-column
-- primary key went through strcoll(); "C" compares with memcmp. This rewrites the table
-- and its indexes once.
ALTER TABLE leaderboard_scores
    ALTER COLUMN game_id TYPE VARCHAR(100) COLLATE "C",
    ALTER COLUMN period TYPE VARCHAR(20) COLLATE "C",
    ALTER COLUMN period_key TYPE VARCHAR(10) COLLATE "C",
    ALTER COLUMN player_id TYPE VARCHAR(100) COLLATE "C";
