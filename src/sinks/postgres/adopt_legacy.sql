-- Adopting the old pipeline's database (../shared/legacy/schema.sql) into gamestream's
-- first migration (20261122000001_contract_tables.sql).
--
-- `gamestream migrate` runs this once, in the same transaction that then records that
-- migration as applied, when the database has the old tables and no migration history;
-- the later migrations then run as on any database. Nothing is dropped and no row is
-- lost: columns are widened (TIMESTAMP holding UTC clock times → TIMESTAMPTZ, INTEGER →
-- BIGINT), NULLs the new NOT NULL columns cannot hold are replaced by the defaults the
-- old code would have written, missing columns and indexes are added, the old indexes
-- are renamed to gamestream's names, and a constraint old rows could break is added
-- NOT VALID and validated only where they keep it.

-- The old TIMESTAMP columns held UTC clock times (the Go service and the consumers wrote
-- datetime.utcnow()). One ALTER per table, so that each table is rewritten once.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT table_name,
               string_agg(format('ALTER COLUMN %I TYPE TIMESTAMPTZ USING %I AT TIME ZONE ''UTC''',
                                 column_name, column_name), ', ') AS clauses
        FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND table_name IN ('events', 'player_statistics', 'leaderboards', 'dlq_events')
          AND data_type = 'timestamp without time zone'
        GROUP BY table_name
    LOOP
        EXECUTE format('ALTER TABLE %I %s', t.table_name, t.clauses);
    END LOOP;
END $$;

-- An old index on exactly these columns is renamed to gamestream's name; where there is
-- none, it is created.
CREATE FUNCTION pg_temp.gamestream_adopt_index(tbl text, cols text[], wanted text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    found text;
BEGIN
    SELECT i.relname INTO found
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    WHERE t.relname = tbl
      AND t.relnamespace = to_regnamespace(current_schema())
      AND NOT x.indisprimary AND NOT x.indisunique
      AND x.indpred IS NULL AND x.indexprs IS NULL
      AND ARRAY(SELECT a.attname::text
                FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                ORDER BY k.ord) = cols
    ORDER BY i.relname = wanted DESC, i.relname
    LIMIT 1;
    IF found IS NULL THEN
        EXECUTE format('CREATE INDEX %I ON %I (%s)', wanted, tbl,
                       (SELECT string_agg(format('%I', c), ', ') FROM unnest(cols) AS c));
    ELSIF found <> wanted THEN
        EXECUTE format('ALTER INDEX %I RENAME TO %I', found, wanted);
    END IF;
END $$;

-- events: every row kept; `data` and `created_at` become NOT NULL.
UPDATE events SET data = '{}' WHERE data IS NULL;
UPDATE events SET created_at = ingested_at WHERE created_at IS NULL;
ALTER TABLE events
    ALTER COLUMN data SET NOT NULL,
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN created_at SET NOT NULL;
SELECT pg_temp.gamestream_adopt_index('events', ARRAY['player_id'], 'idx_events_player_id');
SELECT pg_temp.gamestream_adopt_index('events', ARRAY['game_id'], 'idx_events_game_id');
SELECT pg_temp.gamestream_adopt_index('events', ARRAY['event_type'], 'idx_events_event_type');
SELECT pg_temp.gamestream_adopt_index('events', ARRAY['event_timestamp'], 'idx_events_event_timestamp');

-- player_statistics: INTEGER counts widened to BIGINT. Its rows are the old aggregator's
-- partial counts; `gamestream cutover apply` replaces them with the Redis hashes' totals.
UPDATE player_statistics
SET total_events = coalesce(total_events, 0),
    event_breakdown = coalesce(event_breakdown, '{}'),
    updated_at = coalesce(updated_at, now()),
    created_at = coalesce(created_at, now())
WHERE total_events IS NULL OR event_breakdown IS NULL OR updated_at IS NULL OR created_at IS NULL;
ALTER TABLE player_statistics
    ALTER COLUMN total_events TYPE BIGINT,
    ALTER COLUMN total_events SET NOT NULL,
    ALTER COLUMN event_breakdown SET NOT NULL,
    ALTER COLUMN updated_at SET DEFAULT now(),
    ALTER COLUMN updated_at SET NOT NULL,
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN created_at SET NOT NULL;

-- leaderboards: `period` stays VARCHAR(50) (wider than gamestream's 20 is harmless); its
-- CHECK is added NOT VALID and validated when every old row keeps it.
UPDATE leaderboards
SET updated_at = coalesce(updated_at, now()), created_at = coalesce(created_at, now())
WHERE updated_at IS NULL OR created_at IS NULL;
ALTER TABLE leaderboards
    ALTER COLUMN updated_at SET DEFAULT now(),
    ALTER COLUMN updated_at SET NOT NULL,
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN created_at SET NOT NULL,
    ADD CONSTRAINT leaderboards_period_check
        CHECK (period IN ('daily', 'weekly', 'alltime')) NOT VALID;
DO $$
BEGIN
    ALTER TABLE leaderboards VALIDATE CONSTRAINT leaderboards_period_check;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'leaderboards has rows whose period is not daily, weekly or alltime: '
                  'leaderboards_period_check stays NOT VALID (new rows are checked)';
END $$;
SELECT pg_temp.gamestream_adopt_index('leaderboards', ARRAY['game_id', 'period'], 'idx_leaderboards_game_period');
SELECT pg_temp.gamestream_adopt_index('leaderboards', ARRAY['rank'], 'idx_leaderboards_rank');

-- dlq_events: the old dead letters keep their JSON; the columns that make a dead letter
-- replayable once are added (NULL for the old ones: they have no source offset).
UPDATE dlq_events
SET error_message = coalesce(error_message, '(no message: dead-lettered by the old pipeline)'),
    consumer_service = coalesce(consumer_service, 'unknown'),
    created_at = coalesce(created_at, now())
WHERE error_message IS NULL OR consumer_service IS NULL OR created_at IS NULL;
ALTER TABLE dlq_events
    ALTER COLUMN error_message SET NOT NULL,
    ALTER COLUMN consumer_service SET NOT NULL,
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN created_at SET NOT NULL,
    ADD COLUMN error_kind VARCHAR(64) NOT NULL DEFAULT 'unknown',
    ADD COLUMN source_topic TEXT,
    ADD COLUMN source_partition INTEGER,
    ADD COLUMN source_offset BIGINT,
    ADD COLUMN original_payload BYTEA,
    ADD COLUMN replayed_at TIMESTAMPTZ,
    ADD UNIQUE (consumer_service, source_topic, source_partition, source_offset);
SELECT pg_temp.gamestream_adopt_index('dlq_events', ARRAY['consumer_service'], 'idx_dlq_events_consumer_service');
SELECT pg_temp.gamestream_adopt_index('dlq_events', ARRAY['created_at'], 'idx_dlq_events_created_at');

DROP FUNCTION pg_temp.gamestream_adopt_index(text, text[], text);
