-- Reprocess tasks keep their progress events, and undo restores sheets too.

-- Every event a task published, in order, so that a client connecting after
-- the task ended (or after a restart) still receives the whole log.
CREATE TABLE task_events (
    task_id    uuid NOT NULL REFERENCES reprocess_tasks (task_id) ON DELETE CASCADE,
    -- 1, 2, 3... per task; the stream's event id.
    event_id   integer NOT NULL CHECK (event_id > 0),
    event      text NOT NULL CHECK (event IN ('progress', 'complete', 'error')),
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, event_id)
);

-- The sheet columns a reprocess overwrites, as they were before it.
CREATE TABLE sheet_history (
    task_id          uuid NOT NULL REFERENCES reprocess_tasks (task_id) ON DELETE CASCADE,
    sheet_id         bigint NOT NULL REFERENCES sheets (id) ON DELETE CASCADE,
    status           text NOT NULL,
    error            text,
    last_profile_id  integer,
    processed_at     timestamptz,
    measurement_hash text,
    identifiers      jsonb NOT NULL,
    score            numeric(10, 3),
    PRIMARY KEY (task_id, sheet_id)
);
CREATE INDEX sheet_history_sheet_idx ON sheet_history (sheet_id);

-- An answer row that did not exist before the task (its sheet had never been
-- read) is recorded with inserted = true, so undo deletes it.
ALTER TABLE answer_history ADD COLUMN inserted boolean NOT NULL DEFAULT false;

-- Which options a task ran with (keep manual corrections, re-decide only).
ALTER TABLE reprocess_tasks ADD COLUMN options jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Every bubble's fill of the sheet's last reading, in template order, so a
-- decision-only profile can re-decide the whole sheet without its image.
ALTER TABLE sheets ADD COLUMN fills real[];
ALTER TABLE sheet_history ADD COLUMN fills real[];

-- Undo and history pruning leave their mark on the task.
ALTER TABLE reprocess_tasks ADD COLUMN undone_at timestamptz;
ALTER TABLE reprocess_tasks ADD COLUMN history_pruned boolean NOT NULL DEFAULT false;
