-- Make a reprocess that changes every answer cheaper to write.
--
-- 1. The answer history holds one row per sheet and task, with the old
--    values of the sheet's changed answers in one array, instead of one row
--    per answer: the task index gets 7,109 entries instead of a million.
--    The array is stored out of line without compression (STORAGE
--    EXTERNAL): the default compression made writing it 25 % slower on
--    demo data, whose fills repeat, and would cost more on real fills. The
--    view answer_history shows one row per answer as before, for undo and
--    for reports.
--
-- 2. The UPDATE of omr_answers writes that history itself. A statement
--    trigger reads the replaced rows from its transition table, when the
--    transaction has set omr_desktop.history_task to the task's id;
--    otherwise it does nothing. Before, a reprocess first copied the
--    changed rows with their old values into a temporary table, then wrote
--    the history and the UPDATE from it. For 1,066,350 changed answers
--    (7,109 sheets, PostgreSQL 16) those three steps took 6.1 s; the UPDATE
--    with its trigger takes 4.3 s. The history holds the row versions the
--    UPDATE really replaced, so a value that another writer committed just
--    before is kept in the history too.
--
-- 3. omr_answers keeps half of each page free (fillfactor 50, was 70).
--    A reprocess rewrites every answer row of its sheets; with room on the
--    page the new version stays there (a HOT update) and the primary key is
--    not touched. At 70 about 56 % of the updated rows moved to another
--    page and needed a new index entry: the UPDATE of 1,066,350 rows took
--    3.9-4.3 s at 70 and 2.7-3.0 s at 50, when the table grows from 164
--    to 230 MB. CLUSTER rewrites the existing rows at the new setting.

CREATE TYPE answer_snapshot AS (
    question          text,
    answer_raw        text,
    answer_corrected  text,
    confidence_score  real,
    fills             real[],
    reason            text,
    needs_review      boolean,
    corrected_by      text,
    corrected_at      timestamptz,
    -- The row did not exist before the task; undo deletes it.
    inserted          boolean
);

CREATE TABLE answer_history_sheets (
    task_id      uuid NOT NULL,
    sheet_id     bigint NOT NULL,
    answers      answer_snapshot[] NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE answer_history_sheets ALTER COLUMN answers SET STORAGE EXTERNAL;
CREATE INDEX answer_history_sheets_task_idx ON answer_history_sheets (task_id);

INSERT INTO answer_history_sheets (task_id, sheet_id, answers, recorded_at)
SELECT task_id, sheet_id,
       array_agg(ROW(question, answer_raw, answer_corrected, confidence_score,
                     fills, reason, needs_review, corrected_by, corrected_at,
                     inserted)::answer_snapshot ORDER BY question),
       min(recorded_at)
FROM answer_history
GROUP BY task_id, sheet_id;

DROP TABLE answer_history;

CREATE VIEW answer_history AS
SELECT h.task_id, h.sheet_id, a.question, a.answer_raw, a.answer_corrected,
       a.confidence_score, a.fills, a.reason, a.needs_review, a.corrected_by,
       a.corrected_at, h.recorded_at, a.inserted
FROM answer_history_sheets h
CROSS JOIN LATERAL unnest(h.answers) AS a;

-- The trigger also leaves in omr_desktop.history_counts how many of the
-- replaced rows carried a manual correction, for the reprocess's result.
CREATE FUNCTION record_answer_history() RETURNS trigger
LANGUAGE plpgsql
AS $function$
DECLARE
    task uuid := nullif(current_setting('omr_desktop.history_task', true), '')::uuid;
BEGIN
    IF task IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO answer_history_sheets (task_id, sheet_id, answers)
    SELECT task, o.sheet_id,
           array_agg(ROW(o.question, o.answer_raw, o.answer_corrected,
                         o.confidence_score, o.fills, o.reason, o.needs_review,
                         o.corrected_by, o.corrected_at, false)::answer_snapshot)
    FROM old_answers o
    GROUP BY o.sheet_id;
    PERFORM set_config(
        'omr_desktop.history_counts',
        (SELECT count(*) FROM old_answers WHERE corrected_at IS NOT NULL)::text,
        true);
    RETURN NULL;
END
$function$;

CREATE TRIGGER omr_answers_history
AFTER UPDATE ON omr_answers
REFERENCING OLD TABLE AS old_answers
FOR EACH STATEMENT EXECUTE FUNCTION record_answer_history();

-- A sheet's fills (850 floats on a demo sheet, stored out of line) are
-- copied into sheet_history only when the task changes them; fills_kept
-- marks the rows that leave them out. A reprocess under a profile that
-- measures as the last one did keeps every sheet's fills, and copying and
-- rewriting them took 0.4 s of 0.6 s for 7,109 sheets.
ALTER TABLE sheet_history ADD COLUMN fills_kept boolean NOT NULL DEFAULT false;

ALTER TABLE omr_answers SET (fillfactor = 50);
CLUSTER omr_answers USING omr_answers_pkey;
