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
-- Set-based: two statements over all the sheets at once, no loop, so it
-- scales with the index scans on omr_answers, not with round trips.
-- Unknown ids are ignored; calling it twice gives the same scores and flags.
CREATE PROCEDURE reprocess_sheet_surgical(
    sheet_ids bigint[],
    INOUT rescored integer DEFAULT NULL
)
LANGUAGE plpgsql
AS $procedure$
BEGIN
    WITH target AS (
        SELECT s.id AS sheet_id, b.answer_key_id
        FROM sheets s
        JOIN batches b ON b.id = s.batch_id
        WHERE s.id = ANY (sheet_ids)
    ),
    marks AS (
        SELECT t.sheet_id,
               sum(CASE
                       WHEN e.effective = ''
                           THEN coalesce(i.points_blank, k.points_blank)
                       WHEN e.effective = ANY (i.accepted)
                           THEN coalesce(i.points_correct, k.points_correct)
                       ELSE coalesce(i.points_wrong, k.points_wrong)
                   END) AS score
        FROM target t
        JOIN answer_keys k ON k.id = t.answer_key_id
        JOIN answer_key_items i ON i.answer_key_id = k.id
        LEFT JOIN omr_answers a
               ON a.sheet_id = t.sheet_id AND a.question = i.question
        CROSS JOIN LATERAL (
            SELECT CASE
                       WHEN a.answer_corrected = '*' THEN a.answer_raw
                       ELSE coalesce(a.answer_corrected, '')
                   END AS effective
        ) e
        GROUP BY t.sheet_id
    )
    UPDATE sheets s
    SET score = CASE
                    WHEN t.answer_key_id IS NULL THEN NULL
                    ELSE coalesce(m.score, 0)
                END,
        scored_at = now()
    FROM target t
    LEFT JOIN marks m ON m.sheet_id = t.sheet_id
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
