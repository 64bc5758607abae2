-- REPROCESS_SHEET_SURGICAL in one pass over the answers.
--
-- Scores and flags are the same as in migration 0002, whose header defines
-- them. Version 0002 read the sheets' answers twice, once for the scores
-- and once for the flags; this version aggregates both in one scan, with
-- the answer key joined to the answers it scores (LEFT JOIN, so answers to
-- questions outside the key still count for the flags).

CREATE OR REPLACE PROCEDURE reprocess_sheet_surgical(
    sheet_ids bigint[],
    INOUT rescored integer DEFAULT NULL
)
LANGUAGE plpgsql
AS $procedure$
BEGIN
    DELETE FROM sheet_flags f WHERE f.sheet_id = ANY (sheet_ids);

    -- One statement: the per-sheet totals are computed once and feed both
    -- the UPDATE of the scores and the INSERT of the flags.
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
    -- Per sheet: the key questions' points minus their blank points (a key
    -- question without an answer row counts as blank; an answer outside
    -- the key adds NULL, which sum() skips), and the flag counts.
    totals AS MATERIALIZED (
        SELECT a.sheet_id,
               sum(CASE
                       WHEN i.question IS NULL THEN NULL
                       WHEN e.effective = '' THEN e.blank
                       WHEN e.effective = ANY (i.accepted) THEN
                           coalesce(i.points_correct, k.points_correct)
                       ELSE coalesce(i.points_wrong, k.points_wrong)
                   END - e.blank) AS gain,
               count(*) FILTER (WHERE a.reason = 'multi_mark') AS multi,
               count(*) FILTER (WHERE a.answer_corrected = '') AS blank,
               count(*) FILTER (
                   WHERE a.needs_review AND a.reason <> 'multi_mark') AS low,
               count(*) FILTER (
                   WHERE a.needs_review AND a.corrected_at IS NULL) AS review,
               count(*) FILTER (WHERE a.reason = 'erased') AS erased,
               bool_and(a.answer_raw = '') AS all_blank
        FROM omr_answers a
        JOIN sheets s ON s.id = a.sheet_id
        JOIN batches b ON b.id = s.batch_id
        LEFT JOIN answer_key_items i
          ON i.answer_key_id = b.answer_key_id AND i.question = a.question
        LEFT JOIN answer_keys k ON k.id = i.answer_key_id
        CROSS JOIN LATERAL (
            SELECT CASE
                       WHEN a.answer_corrected = '*' THEN a.answer_raw
                       ELSE a.answer_corrected
                   END AS effective,
                   coalesce(i.points_blank, k.points_blank) AS blank
        ) e
        WHERE a.sheet_id = ANY (sheet_ids)
        GROUP BY a.sheet_id
    ),
    scored AS (
        UPDATE sheets s
        SET score = CASE
                        WHEN t.answer_key_id IS NULL THEN NULL
                        ELSE coalesce(bt.all_blank, 0) + coalesce(tot.gain, 0)
                    END,
            scored_at = now()
        FROM target t
        LEFT JOIN blank_totals bt ON bt.answer_key_id = t.answer_key_id
        LEFT JOIN totals tot ON tot.sheet_id = t.sheet_id
        WHERE s.id = t.sheet_id
        RETURNING s.id
    ),
    flagged AS (
        INSERT INTO sheet_flags (sheet_id, flag, count)
        SELECT c.sheet_id, v.flag, v.n
        FROM totals c
        CROSS JOIN LATERAL (
            VALUES ('MULTI_MARK', c.multi),
                   ('BLANK_ANSWER', c.blank),
                   ('LOW_CONFIDENCE', c.low),
                   ('NEEDS_REVIEW', c.review),
                   ('ERASED_MARK', c.erased),
                   ('BLANK_SHEET', CASE WHEN c.all_blank THEN 1 ELSE 0 END)
        ) AS v (flag, n)
        WHERE v.n > 0
    )
    SELECT count(*) INTO rescored FROM scored;
END;
$procedure$;
