-- Keep the bubble fills once, in sheets.fills, instead of also per answer.
--
-- Every answer's fills were a copy of a slice of its sheet's fills (every
-- bubble in template order), which every sheet read by the engine since
-- migration 0003 stores. Nothing read the copy: Panel C, the re-decide and
-- undo use the sheet's fills. The copy took a third of each omr_answers
-- row (a demo batch of 1,066,350 answers: 230 MB, 146 MB without it), and
-- a reprocess that changes every answer wrote it twice more, into the new
-- row version and into the history. Without it, that UPDATE with its history took 2.7-3.1 s
-- instead of 3.5-4.1 s and wrote 237 MB of WAL instead of 330 MB (embedded
-- PostgreSQL 16, a 2-core VM, four alternations).
--
-- The history's snapshot type keeps its fills attribute, NULL from now on,
-- because a composite type stored in a table column cannot lose an
-- attribute. Snapshots written before keep their fills, which undo no
-- longer reads. The trigger below is migration 0007's with that NULL.

CREATE OR REPLACE FUNCTION record_answer_history() RETURNS trigger
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
                         o.confidence_score, NULL, o.reason, o.needs_review,
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

-- A sheet written before migration 0003, or by another client, may have
-- no fills of its own, and its answers the only copy. Those answers' fills
-- move to answer_fills_archive, created only when there are any, so that
-- nothing measured is lost. The re-decide cannot use them either way: it
-- needs every bubble's fill and the hash of the settings that measured it.
DO $archive$
DECLARE
    archived bigint;
BEGIN
    CREATE TABLE answer_fills_archive (
        sheet_id  bigint NOT NULL REFERENCES sheets (id) ON DELETE CASCADE,
        question  text NOT NULL,
        fills     real[] NOT NULL,
        PRIMARY KEY (sheet_id, question)
    );
    INSERT INTO answer_fills_archive (sheet_id, question, fills)
    SELECT a.sheet_id, a.question, a.fills
    FROM omr_answers a JOIN sheets s ON s.id = a.sheet_id
    WHERE s.fills IS NULL AND cardinality(a.fills) > 0;
    GET DIAGNOSTICS archived = ROW_COUNT;
    IF archived = 0 THEN
        DROP TABLE answer_fills_archive;
    ELSE
        RAISE NOTICE 'Kept the fills of % answers whose sheets store none in answer_fills_archive.', archived;
    END IF;
END
$archive$;

ALTER TABLE omr_answers DROP COLUMN fills;
-- Dropping a column leaves its bytes in every stored row until the row is
-- written again, so CLUSTER rewrites the table without them now.
CLUSTER omr_answers USING omr_answers_pkey;
