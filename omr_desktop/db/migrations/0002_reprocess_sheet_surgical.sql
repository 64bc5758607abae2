-- REPROCESS_SHEET_SURGICAL: rescore and reflag exactly the given sheets.
--
-- Created unquoted, so CALL REPROCESS_SHEET_SURGICAL(...) and
-- CALL reprocess_sheet_surgical(...) both resolve to it.
--
-- Score, per question of the batch's answer key:
--   effective answer = answer_raw when answer_corrected is '*' (an
--                      unresolved multi-mark: a key accepting 'BC' then
--                      scores a BC mark as correct), else answer_corrected;
--                      a key question with no answer row counts as blank;
--   ''                          -> points for blank
--   equal to an accepted answer -> points for correct
--   anything else               -> points for wrong
-- with per-question points falling back to the key's own. Answers to
-- questions the key does not list do not count. A sheet whose batch has no
-- key gets a NULL score.
--
-- Flags, counted over the sheet's answers (a flag is stored only when its
-- count is above zero):
--   MULTI_MARK      reason 'multi_mark'
--   BLANK_ANSWER    answer_corrected ''
--   LOW_CONFIDENCE  needs_review for a reason other than a multi-mark
--   NEEDS_REVIEW    needs_review and not corrected by hand
--   ERASED_MARK     reason 'erased'
--   BLANK_SHEET     every answer_raw is '' (count 1)
--
-- Set-based: one statement for scores and one for flags over all the
-- sheets at once, no loop and no per-row lookups.
-- Unknown ids are ignored; calling it twice gives the same scores and flags.
CREATE PROCEDURE reprocess_sheet_surgical(
    sheet_ids bigint[],
    INOUT rescored integer DEFAULT NULL
)
LANGUAGE plpgsql
AS $procedure$
BEGIN
    -- Score = the blank points of every key question, plus, for each
    -- answered key question, its points minus its blank points, so a key
    -- question without an answer row counts as blank. One pass over the
    -- answers with hash joins, whatever the number of sheets.
    WITH target AS (
        SELECT s.id AS sheet_id, b.answer_key_id
        FROM sheets s
        JOIN batches b ON b.id = s.batch_id
        WHERE s.id = ANY (sheet_ids)
    ),
    blank_totals AS (
        SELECT i.answer_key_id,
               sum(coalesce(i.points_blank, k.points_blank)) AS all_blank
        FROM answer_key_items i
        JOIN answer_keys k ON k.id = i.answer_key_id
        WHERE i.answer_key_id IN (SELECT answer_key_id FROM target)
        GROUP BY i.answer_key_id
    ),
    -- The answers join the key's tables directly rather than through a CTE:
    -- with a CTE's guessed row count the planner probed the primary key once
    -- per question, 4.0 s instead of 1.2 s for 7,109 sheets x 150 questions.
    answered AS (
        SELECT a.sheet_id,
               sum(CASE
                       WHEN e.effective = '' THEN e.blank
                       WHEN e.effective = ANY (i.accepted) THEN
                           coalesce(i.points_correct, k.points_correct)
                       ELSE coalesce(i.points_wrong, k.points_wrong)
                   END - e.blank) AS gain
        FROM omr_answers a
        JOIN sheets s ON s.id = a.sheet_id
        JOIN batches b ON b.id = s.batch_id
        JOIN answer_key_items i
          ON i.answer_key_id = b.answer_key_id AND i.question = a.question
        JOIN answer_keys k ON k.id = i.answer_key_id
        CROSS JOIN LATERAL (
            SELECT CASE
                       WHEN a.answer_corrected = '*' THEN a.answer_raw
                       ELSE a.answer_corrected
                   END AS effective,
                   coalesce(i.points_blank, k.points_blank) AS blank
        ) e
        WHERE a.sheet_id = ANY (sheet_ids)
        GROUP BY a.sheet_id
    )
    UPDATE sheets s
    SET score = CASE
                    WHEN t.answer_key_id IS NULL THEN NULL
                    ELSE coalesce(bt.all_blank, 0) + coalesce(an.gain, 0)
                END,
        scored_at = now()
    FROM target t
    LEFT JOIN blank_totals bt ON bt.answer_key_id = t.answer_key_id
    LEFT JOIN answered an ON an.sheet_id = t.sheet_id
    WHERE s.id = t.sheet_id;

    GET DIAGNOSTICS rescored = ROW_COUNT;

    DELETE FROM sheet_flags f WHERE f.sheet_id = ANY (sheet_ids);

    INSERT INTO sheet_flags (sheet_id, flag, count)
    SELECT c.sheet_id, v.flag, v.n
    FROM (
        SELECT a.sheet_id,
               count(*) FILTER (WHERE a.reason = 'multi_mark') AS multi,
               count(*) FILTER (WHERE a.answer_corrected = '') AS blank,
               count(*) FILTER (
                   WHERE a.needs_review AND a.reason <> 'multi_mark') AS low,
               count(*) FILTER (
                   WHERE a.needs_review AND a.corrected_at IS NULL) AS review,
               count(*) FILTER (WHERE a.reason = 'erased') AS erased,
               bool_and(a.answer_raw = '') AS all_blank
        FROM omr_answers a
        WHERE a.sheet_id = ANY (sheet_ids)
        GROUP BY a.sheet_id
    ) c
    CROSS JOIN LATERAL (
        VALUES ('MULTI_MARK', c.multi),
               ('BLANK_ANSWER', c.blank),
               ('LOW_CONFIDENCE', c.low),
               ('NEEDS_REVIEW', c.review),
               ('ERASED_MARK', c.erased),
               ('BLANK_SHEET', CASE WHEN c.all_blank THEN 1 ELSE 0 END)
    ) AS v (flag, n)
    WHERE v.n > 0;
END;
$procedure$;
