-- The built-in profiles' settings, as the engine defines them.
--
-- Generated from omr_desktop.engine.profile.BUILTIN_PROFILES; the test
-- suite checks that both agree, so a change to the built-ins comes with a
-- new migration.

UPDATE profiles SET description = 'Reads solid marks; light marks and near-threshold bubbles go to review.',
    settings = '{"decision": {"erased_high": 0.2, "erased_low": 0.08, "flag_blank_blocks": true, "min_fill": 0.45, "min_jump": 0.2, "multi_mark_gap": 0.25, "multi_mark_policy": "darkest", "review_threshold": 0.9, "solid_fill": 0.6, "uncertain_above": 0.15, "uncertain_below": 0.25}, "measurement": {"align_search": 0.5, "blur_ksize": 0, "fill_quantile": 0.6, "levels_gamma": 1.0, "levels_high": 1.0, "levels_low": 0.0, "median_ksize": 0, "paper_window": 4.0, "sample_inset": 0.7}}'::jsonb,
    updated_at = now()
WHERE id = 1;

UPDATE profiles SET description = 'Also reads light pencil marks (about 25-40 % darkness); printed letters, erasure residue and shading stay blank.',
    settings = '{"decision": {"erased_high": 0.2, "erased_low": 0.06, "flag_blank_blocks": true, "min_fill": 0.215, "min_jump": 0.05, "multi_mark_gap": 0.2, "multi_mark_policy": "darkest", "review_threshold": 0.5, "solid_fill": 0.6, "uncertain_above": 0.08, "uncertain_below": 0.04}, "measurement": {"align_search": 0.5, "blur_ksize": 0, "fill_quantile": 0.6, "levels_gamma": 1.0, "levels_high": 1.0, "levels_low": 0.0, "median_ksize": 0, "paper_window": 4.0, "sample_inset": 0.7}}'::jsonb,
    updated_at = now()
WHERE id = 2;

UPDATE profiles SET description = 'Accepts only solid marks; light marks, erasures and close calls go to review.',
    settings = '{"decision": {"erased_high": 0.15, "erased_low": 0.06, "flag_blank_blocks": true, "min_fill": 0.55, "min_jump": 0.3, "multi_mark_gap": 0.35, "multi_mark_policy": "star", "review_threshold": 0.95, "solid_fill": 0.65, "uncertain_above": 0.15, "uncertain_below": 0.45}, "measurement": {"align_search": 0.5, "blur_ksize": 0, "fill_quantile": 0.6, "levels_gamma": 1.0, "levels_high": 1.0, "levels_low": 0.0, "median_ksize": 0, "paper_window": 4.0, "sample_inset": 0.7}}'::jsonb,
    updated_at = now()
WHERE id = 3;
