-- `leaderboards` holds the all-time top N of each game only (CONTRACT, issue 18), as the
-- old leaderboard manager wrote it: the operators' query
--   SELECT * FROM leaderboards WHERE game_id = 'game-1' ORDER BY rank LIMIT 10
-- reads one board, not daily, weekly and all-time rows interleaved. Daily and weekly
-- boards stay in `leaderboard_scores`, Redis and the query API; the refresh writes
-- all-time rows only from now on, and this removes the rows earlier versions wrote.
-- The `period` column and its CHECK stay as the CONTRACT declares them.
DELETE FROM leaderboards WHERE period <> 'alltime';
