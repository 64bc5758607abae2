/*
 * Compiled inner loops of bubble measuring and deciding, for
 * omr_desktop/engine/kernels.py.
 *
 * Each function computes what the numpy code of align.py, measure.py and
 * decide.py computes, bit for bit. The measuring functions do without the
 * (bubbles x shifts) and (bubbles x samples) index arrays that the numpy
 * code gathers through. Those arrays take 1.3 MB per template, and after a
 * JPEG decode has evicted them from the CPU caches, reading them cost more
 * than the arithmetic. The deciding function replaces some forty numpy
 * calls on arrays of a few hundred values, each of which costs more in
 * overhead than in arithmetic.
 *
 * The functions release the GIL while they run, so another Python thread
 * may write to the arrays meanwhile. Every value that decides where memory
 * is read or written is therefore copied into private memory and checked
 * there first, or clipped where it is used. An output buffer that overlaps
 * an input is rejected.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Raised in step with kernels.py, which ignores a module of another version
 * (an old build left next to newer sources). */
#define KERNEL_VERSION 3

static Py_ssize_t clip_index(Py_ssize_t value, Py_ssize_t low, Py_ssize_t high)
{
    return value < low ? low : (value > high ? high : value);
}

/* Clamp a shift to [-limit, limit]: a larger one moves every index it is
 * added to past the edge that the index is then clipped to anyway. */
static int64_t clamp_shift(int64_t shift, int64_t limit)
{
    return shift < -limit ? -limit : (shift > limit ? limit : shift);
}

/* Samples are counted in LANES byte lanes: gcc 12 -O3 compiles such loops to
 * 16-byte vector instructions. */
#define LANES 16

/* Kept out of line: inlined into the loop over bubbles, gcc 12 compiled the
 * loops over lanes to scalar code, and measuring the fills of a demo sheet
 * took twice as long. */
#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define NOINLINE __declspec(noinline)
#else
#define NOINLINE
#endif

/* Return how many of values[0..padded) are <= threshold. ``padded`` is a
 * multiple of LANES. */
static NOINLINE Py_ssize_t count_at_most(const uint8_t *values, Py_ssize_t padded,
                                uint8_t threshold)
{
    Py_ssize_t total = 0;
    /* Each byte lane counts at most 255 samples before it is added up. */
    for (Py_ssize_t start = 0; start < padded; start += 255 * LANES) {
        const Py_ssize_t end = start + 255 * LANES < padded ? start + 255 * LANES : padded;
        uint8_t lanes[LANES] = {0};
        for (Py_ssize_t k = start; k < end; k += LANES) {
            for (int j = 0; j < LANES; j++) {
                lanes[j] += values[k + j] <= threshold;
            }
        }
        for (int j = 0; j < LANES; j++) {
            total += lanes[j];
        }
    }
    return total;
}

/* Set *low and *high to the smallest and the largest of values[0..padded).
 * ``padded`` is a multiple of LANES. */
static NOINLINE void extremes(const uint8_t *values, Py_ssize_t padded, int *low,
                              int *high)
{
    uint8_t smallest[LANES];
    uint8_t largest[LANES];
    for (int j = 0; j < LANES; j++) {
        smallest[j] = 255;
        largest[j] = 0;
    }
    for (Py_ssize_t k = 0; k < padded; k += LANES) {
        for (int j = 0; j < LANES; j++) {
            const uint8_t value = values[k + j];
            smallest[j] = value < smallest[j] ? value : smallest[j];
            largest[j] = value > largest[j] ? value : largest[j];
        }
    }
    for (int j = 0; j < LANES; j++) {
        *low = smallest[j] < *low ? smallest[j] : *low;
        *high = largest[j] > *high ? largest[j] : *high;
    }
}

/*
 * Return the kth smallest of values[0..count): the lowest grey g with more
 * than kth values <= g, found by bisection between the smallest and the
 * largest value. Each step is one vectorised counting pass. values must
 * have room for count rounded up to a multiple of LANES, and the bytes past
 * count are overwritten.
 *
 * On the 850 bubbles x 80 samples of a demo sheet (gcc 12 -O3, AMD EPYC),
 * the bisection took 36-42 us when measured apart from the sampling, a
 * 256-bin histogram 87-113 us and a quickselect longer still.
 */
static int select_kth(uint8_t *values, Py_ssize_t count, Py_ssize_t kth)
{
    const Py_ssize_t padded = (count + LANES - 1) / LANES * LANES;
    /* Padding with a copy of a sample leaves the extremes as they are. */
    for (Py_ssize_t k = count; k < padded; k++) {
        values[k] = values[0];
    }
    int low = 255;
    int high = 0;
    extremes(values, padded, &low, &high);
    /* Padding of 255 is never counted: every threshold tried is below the
     * largest value, so at most 254. */
    for (Py_ssize_t k = count; k < padded; k++) {
        values[k] = 255;
    }
    while (low < high) {
        const int middle = (low + high) / 2;
        if (count_at_most(values, padded, (uint8_t)middle) > kth) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    return low;
}

/*
 * Check that a buffer contains rows x columns items of item_size bytes,
 * aligned for the item type. The product is checked for overflow first, so
 * that counts passed with the buffers cannot claim more items than the
 * memory behind them.
 */
static int check_size(const Py_buffer *view, Py_ssize_t rows, Py_ssize_t columns,
                      Py_ssize_t item_size, const char *name)
{
    if (rows < 0 || columns < 0 ||
        (columns > 0 && rows > PY_SSIZE_T_MAX / item_size / columns)) {
        PyErr_Format(PyExc_ValueError, "%s: invalid size %zd x %zd", name, rows,
                     columns);
        return -1;
    }
    if (view->len != rows * columns * item_size) {
        PyErr_Format(PyExc_ValueError,
                     "%s has %zd bytes, expected %zd items of %zd bytes", name,
                     view->len, rows * columns, item_size);
        return -1;
    }
    if ((uintptr_t)view->buf % (uintptr_t)item_size != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to %zd bytes", name,
                     item_size);
        return -1;
    }
    return 0;
}

/* Reject an output buffer that shares bytes with an input buffer. */
static int check_apart(const Py_buffer *out, const Py_buffer *input, const char *name)
{
    const char *out_start = out->buf;
    const char *input_start = input->buf;
    if (out->len > 0 && input->len > 0 && out_start < input_start + input->len &&
        input_start < out_start + out->len) {
        PyErr_Format(PyExc_ValueError, "out shares memory with %s", name);
        return -1;
    }
    return 0;
}

/* Return a private copy of a buffer's bytes, or NULL with MemoryError set. */
static void *copy_buffer(const Py_buffer *view)
{
    void *copy = PyMem_Malloc(view->len > 0 ? (size_t)view->len : 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memcpy(copy, view->buf, (size_t)view->len);
    return copy;
}

/*
 * field_contrasts(integral, corners, offsets, area, field_starts,
 *                 field_block, out, n_bubbles, n_fields, n_blocks, n_shifts)
 *
 * integral: int32, the flattened integral image of the search window.
 * corners: int64 (4, n_bubbles), flat indices of each box's top-left,
 *     top-right, bottom-left and bottom-right corners in ``integral``.
 * offsets: int64 (n_blocks, n_shifts), flat offset of each block's shifts.
 * area: float64 (n_bubbles,), pixels per box.
 * field_starts: int64 (n_fields + 1,), each field's first bubble.
 * field_block: int64 (n_fields,), each field's block.
 * out: float64 (n_fields, n_shifts), written: per field and shift of its
 *     block, (mean of box means - lowest box mean), each box mean and the
 *     sum computed in the order of align._box_means and align._run_contrast.
 *
 * The block sums are left to the caller, so that numpy adds them in the
 * same order for both paths.
 */
static PyObject *field_contrasts(PyObject *self, PyObject *args)
{
    Py_buffer integral_view, corners_view, offsets_view, area_view;
    Py_buffer starts_view, blocks_view, out_view;
    Py_ssize_t n_bubbles, n_fields, n_blocks, n_shifts;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*nnnn", &integral_view, &corners_view,
                          &offsets_view, &area_view, &starts_view, &blocks_view,
                          &out_view, &n_bubbles, &n_fields, &n_blocks, &n_shifts)) {
        return NULL;
    }
    PyObject *result = NULL;
    int64_t *corners = NULL;
    int64_t *starts = NULL;
    int64_t *blocks = NULL;
    Py_ssize_t *clamped = NULL;
    double *lowest = NULL;
    const Py_ssize_t size = integral_view.len / (Py_ssize_t)sizeof(int32_t);
    if (size < 1 || n_bubbles < 0 || n_fields < 0 || n_fields == PY_SSIZE_T_MAX ||
        n_blocks < 1 || n_shifts < 1) {
        PyErr_Format(PyExc_ValueError,
                     "invalid sizes: integral image of %zd values, %zd bubbles, "
                     "%zd fields, %zd blocks, %zd shifts",
                     size, n_bubbles, n_fields, n_blocks, n_shifts);
        goto done;
    }
    if (check_size(&integral_view, 1, size, 4, "integral") ||
        check_size(&corners_view, 4, n_bubbles, 8, "corners") ||
        check_size(&offsets_view, n_blocks, n_shifts, 8, "offsets") ||
        check_size(&area_view, 1, n_bubbles, 8, "area") ||
        check_size(&starts_view, 1, n_fields + 1, 8, "field_starts") ||
        check_size(&blocks_view, 1, n_fields, 8, "field_block") ||
        check_size(&out_view, n_fields, n_shifts, 8, "out")) {
        goto done;
    }
    if (check_apart(&out_view, &integral_view, "integral") ||
        check_apart(&out_view, &corners_view, "corners") ||
        check_apart(&out_view, &offsets_view, "offsets") ||
        check_apart(&out_view, &area_view, "area") ||
        check_apart(&out_view, &starts_view, "field_starts") ||
        check_apart(&out_view, &blocks_view, "field_block")) {
        goto done;
    }
    corners = copy_buffer(&corners_view);
    starts = copy_buffer(&starts_view);
    blocks = copy_buffer(&blocks_view);
    clamped = PyMem_Malloc((size_t)(n_blocks * n_shifts) * sizeof(Py_ssize_t));
    lowest = PyMem_Malloc((size_t)n_shifts * sizeof(double));
    if (corners == NULL || starts == NULL || blocks == NULL || clamped == NULL ||
        lowest == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *offsets = offsets_view.buf;
    const int32_t *integral = integral_view.buf;
    const double *area = area_view.buf;
    double *out = out_view.buf;

    /* Every corner stays inside the integral image when the extremes do.
     * The search window ensures that unless it is the whole page, and only
     * then does each corner need clipping. */
    int64_t corner_low = size;
    int64_t corner_high = -1;
    for (Py_ssize_t i = 0; i < 4 * n_bubbles; i++) {
        if (corners[i] < 0 || corners[i] >= size) {
            PyErr_Format(PyExc_ValueError,
                         "corner %zd is %lld, outside the integral image of %zd values",
                         i, (long long)corners[i], size);
            goto done;
        }
        corner_low = corners[i] < corner_low ? corners[i] : corner_low;
        corner_high = corners[i] > corner_high ? corners[i] : corner_high;
    }
    for (Py_ssize_t f = 0; f < n_fields; f++) {
        if (starts[f] < 0 || starts[f] >= starts[f + 1] || starts[f + 1] > n_bubbles ||
            blocks[f] < 0 || blocks[f] >= n_blocks) {
            PyErr_Format(PyExc_ValueError,
                         "field %zd has invalid bubbles [%lld, %lld) or block %lld", f,
                         (long long)starts[f], (long long)starts[f + 1],
                         (long long)blocks[f]);
            goto done;
        }
    }
    /* Offsets are clamped to the image's size, which clips every corner to
     * the same edge and keeps the sums from overflowing. */
    Py_ssize_t offset_low = size;
    Py_ssize_t offset_high = -size;
    for (Py_ssize_t i = 0; i < n_blocks * n_shifts; i++) {
        clamped[i] = (Py_ssize_t)clamp_shift(offsets[i], size);
        offset_low = clamped[i] < offset_low ? clamped[i] : offset_low;
        offset_high = clamped[i] > offset_high ? clamped[i] : offset_high;
    }
    const int inside = n_bubbles == 0 || (corner_low + offset_low >= 0 &&
                                          corner_high + offset_high <= size - 1);

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t f = 0; f < n_fields; f++) {
        const Py_ssize_t first = (Py_ssize_t)starts[f];
        const Py_ssize_t end = (Py_ssize_t)starts[f + 1];
        const Py_ssize_t *block_offsets = clamped + blocks[f] * n_shifts;
        double *total = out + f * n_shifts; /* the field's row of sums */
        for (Py_ssize_t b = first; b < end; b++) {
            const Py_ssize_t top_left = (Py_ssize_t)corners[b];
            const Py_ssize_t top_right = (Py_ssize_t)corners[n_bubbles + b];
            const Py_ssize_t bottom_left = (Py_ssize_t)corners[2 * n_bubbles + b];
            const Py_ssize_t bottom_right = (Py_ssize_t)corners[3 * n_bubbles + b];
            for (Py_ssize_t s = 0; s < n_shifts; s++) {
                const Py_ssize_t offset = block_offsets[s];
                Py_ssize_t tl = top_left + offset;
                Py_ssize_t tr = top_right + offset;
                Py_ssize_t bl = bottom_left + offset;
                Py_ssize_t br = bottom_right + offset;
                if (!inside) {
                    tl = clip_index(tl, 0, size - 1);
                    tr = clip_index(tr, 0, size - 1);
                    bl = clip_index(bl, 0, size - 1);
                    br = clip_index(br, 0, size - 1);
                }
                /* The same int32 differences, wrapping, as the numpy code. */
                const int32_t sum =
                    (int32_t)(((uint32_t)integral[br] - (uint32_t)integral[tr]) -
                              ((uint32_t)integral[bl] - (uint32_t)integral[tl]));
                const double mean = (double)sum / area[b];
                if (b == first) {
                    total[s] = mean;
                    lowest[s] = mean;
                } else {
                    total[s] += mean;
                    /* np.minimum: NaN in either argument gives NaN. */
                    if (!isnan(lowest[s]) && !(mean >= lowest[s])) {
                        lowest[s] = mean;
                    }
                }
            }
        }
        for (Py_ssize_t s = 0; s < n_shifts; s++) {
            total[s] = total[s] / (double)(end - first) - lowest[s];
        }
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;

done:
    PyMem_Free(corners);
    PyMem_Free(starts);
    PyMem_Free(blocks);
    PyMem_Free(clamped);
    PyMem_Free(lowest);
    PyBuffer_Release(&integral_view);
    PyBuffer_Release(&corners_view);
    PyBuffer_Release(&offsets_view);
    PyBuffer_Release(&area_view);
    PyBuffer_Release(&starts_view);
    PyBuffer_Release(&blocks_view);
    PyBuffer_Release(&out_view);
    return result;
}

/*
 * bubble_fills(image, width, height, columns, rows, side, grid_column,
 *              grid_row, shift, paper, kth, out, n_bubbles, n_samples)
 *
 * image: uint8 (height, width), the toned page.
 * columns, rows: int32 (n_bubbles, side), the x of each sample column and
 *     the y of each sample row of a bubble's grid.
 * grid_column, grid_row: int32 (n_samples,), the column and row of each
 *     sample of the grid (the points inside the ellipse).
 * shift: int64 (n_bubbles, 2), (dx, dy) per bubble in image px.
 * paper: float32 (n_bubbles,), the paper grey at each bubble centre, at
 *     least 1.
 * kth: which order statistic of a bubble's samples is its grey.
 * out: float32 (n_bubbles,), written: 1 - grey / paper, clipped to [0, 1].
 *
 * A sample moved by its bubble's shift is clipped to the page, as
 * measure.py clips it.
 */
static PyObject *bubble_fills(PyObject *self, PyObject *args)
{
    Py_buffer image_view, columns_view, rows_view, grid_column_view, grid_row_view;
    Py_buffer shift_view, paper_view, out_view;
    Py_ssize_t width, height, side, kth, n_bubbles, n_samples;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nny*y*ny*y*y*y*nw*nn", &image_view, &width, &height,
                          &columns_view, &rows_view, &side, &grid_column_view,
                          &grid_row_view, &shift_view, &paper_view, &kth, &out_view,
                          &n_bubbles, &n_samples)) {
        return NULL;
    }
    PyObject *result = NULL;
    int32_t *grid_column = NULL;
    int32_t *grid_row = NULL;
    if (width < 1 || height < 1 || side < 1 || side > 64 || n_bubbles < 0 ||
        n_samples < 1 || n_samples > side * side || kth < 0 || kth >= n_samples) {
        PyErr_Format(PyExc_ValueError,
                     "invalid sizes: image %zdx%zd, grid side %zd, %zd samples, kth %zd",
                     width, height, side, n_samples, kth);
        goto done;
    }
    if (check_size(&image_view, height, width, 1, "image") ||
        check_size(&columns_view, n_bubbles, side, 4, "columns") ||
        check_size(&rows_view, n_bubbles, side, 4, "rows") ||
        check_size(&grid_column_view, 1, n_samples, 4, "grid_column") ||
        check_size(&grid_row_view, 1, n_samples, 4, "grid_row") ||
        check_size(&shift_view, n_bubbles, 2, 8, "shift") ||
        check_size(&paper_view, 1, n_bubbles, 4, "paper") ||
        check_size(&out_view, 1, n_bubbles, 4, "out")) {
        goto done;
    }
    if (check_apart(&out_view, &image_view, "image") ||
        check_apart(&out_view, &columns_view, "columns") ||
        check_apart(&out_view, &rows_view, "rows") ||
        check_apart(&out_view, &grid_column_view, "grid_column") ||
        check_apart(&out_view, &grid_row_view, "grid_row") ||
        check_apart(&out_view, &shift_view, "shift") ||
        check_apart(&out_view, &paper_view, "paper")) {
        goto done;
    }
    grid_column = copy_buffer(&grid_column_view);
    grid_row = copy_buffer(&grid_row_view);
    if (grid_column == NULL || grid_row == NULL) {
        goto done;
    }
    for (Py_ssize_t k = 0; k < n_samples; k++) {
        if (grid_column[k] < 0 || grid_column[k] >= side || grid_row[k] < 0 ||
            grid_row[k] >= side) {
            PyErr_Format(PyExc_ValueError, "sample %zd lies outside the %zd x %zd grid",
                         k, side, side);
            goto done;
        }
    }
    const uint8_t *image = image_view.buf;
    const int32_t *columns = columns_view.buf;
    const int32_t *rows = rows_view.buf;
    const int64_t *shift = shift_view.buf;
    const float *paper = paper_view.buf;
    float *out = out_view.buf;

    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t x[64];
    Py_ssize_t row_start[64];
    uint8_t values[64 * 64 + LANES];
    for (Py_ssize_t b = 0; b < n_bubbles; b++) {
        /* Columns and rows are int32, so in int64 a shift clamped to 2**40
         * keeps every sum exact and moves nothing less far than the full one. */
        const int64_t dx = clamp_shift(shift[2 * b], (int64_t)1 << 40);
        const int64_t dy = clamp_shift(shift[2 * b + 1], (int64_t)1 << 40);
        for (Py_ssize_t i = 0; i < side; i++) {
            const int64_t column = (int64_t)columns[b * side + i] + dx;
            const int64_t row = (int64_t)rows[b * side + i] + dy;
            x[i] = column < 0 ? 0 : (column > width - 1 ? width - 1 : (Py_ssize_t)column);
            row_start[i] =
                (row < 0 ? 0 : (row > height - 1 ? height - 1 : (Py_ssize_t)row)) * width;
        }
        for (Py_ssize_t k = 0; k < n_samples; k++) {
            values[k] = image[row_start[grid_row[k]] + x[grid_column[k]]];
        }
        const int grey = select_kth(values, n_samples, kth);
        const float fill = 1.0f - (float)grey / paper[b];
        out[b] = fill < 0.0f ? 0.0f : (fill > 1.0f ? 1.0f : fill);
    }
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;

done:
    PyMem_Free(grid_column);
    PyMem_Free(grid_row);
    PyBuffer_Release(&image_view);
    PyBuffer_Release(&columns_view);
    PyBuffer_Release(&rows_view);
    PyBuffer_Release(&grid_column_view);
    PyBuffer_Release(&grid_row_view);
    PyBuffer_Release(&shift_view);
    PyBuffer_Release(&paper_view);
    PyBuffer_Release(&out_view);
    return result;
}

/* np.clip on float64, as numpy 2 computes it: NaN stays NaN, and a value
 * equal to a bound is kept, so that -0.0 clipped to [0, 1] stays -0.0. */
static double clip_unit(double value)
{
    if (isnan(value)) {
        return value;
    }
    const double raised = value < 0.0 ? 0.0 : value;
    return raised > 1.0 ? 1.0 : raised;
}

/* decide._unit: np.clip(distance / band, 0.0, 1.0). */
static double unit(double distance, double band)
{
    return clip_unit(distance / band);
}

/* np.minimum(a, b) on float64. A NaN argument is returned, the first if both
 * are NaN, with its sign bit: a division 0 / 0 gives a negative NaN on x86.
 * Of two equal values the second is returned, so min(0.0, -0.0) is -0.0. */
static double nan_min(double a, double b)
{
    if (isnan(a)) {
        return a;
    }
    return isnan(b) || !(a < b) ? b : a;
}

/* The decision settings, in the order decide.py passes them. */
enum {
    MIN_FILL,
    MIN_JUMP,
    MULTI_MARK_GAP,
    ERASED_LOW,
    ERASED_HIGH,
    UNCERTAIN_BELOW,
    UNCERTAIN_ABOVE,
    SOLID_FILL,
    REVIEW_THRESHOLD,
    N_SETTINGS
};

/*
 * decide_fields(fills, counts, width, background, margin, settings,
 *               darkest_policy, marked, n_marked, resolved, darkest,
 *               confidence, rule, needs_review, n_bubbles, n_fields)
 *
 * fills: float32 (n_bubbles,), each field's bubbles one after another.
 * counts: int64 (n_fields,), bubbles per field, summing to n_bubbles.
 * width: the widest field's count (decide's padded matrices).
 * background: the sheet background (decide.sheet_background).
 * margin: decide.BACKGROUND_MARGIN.
 * settings: a tuple of N_SETTINGS floats, DecisionSettings in enum order.
 * darkest_policy: 1 when the multi-mark policy is "darkest".
 * The outputs, written, have one value per field:
 *   marked: uint8 (n_fields, width), 1 for a marked bubble.
 *   n_marked, darkest: int64, marks and the darkest bubble's position.
 *   resolved, needs_review: uint8, 0 or 1.
 *   confidence: float64.
 *   rule: int64, the index of the first true condition of
 *     decide._decide_fields, or 6 when none is true.
 *
 * Returns True, or False without computing anything when a fill is not
 * finite or is -0.0, when the background is not finite, when a setting is
 * not finite or when a band is not positive. The numpy path then decides,
 * with numpy's handling of NaN and of the sign of zero. Otherwise no NaN
 * or infinity arises: the kernel matched numpy's NaN signs element by
 * element, but numpy's reduction over a single field returns a NaN of
 * another sign. Measured fills, and the settings that
 * parse_profile_settings accepts, never fall back.
 *
 * The GIL is held throughout: the work takes microseconds.
 */
static PyObject *decide_fields(PyObject *self, PyObject *args)
{
    Py_buffer fills_view, counts_view, marked_view, n_marked_view, resolved_view;
    Py_buffer darkest_view, confidence_view, rule_view, review_view;
    Py_ssize_t width, n_bubbles, n_fields;
    double background, margin;
    double d[N_SETTINGS];
    int darkest_policy;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*ndd(ddddddddd)pw*w*w*w*w*w*w*nn", &fills_view,
                          &counts_view, &width, &background, &margin, &d[MIN_FILL],
                          &d[MIN_JUMP], &d[MULTI_MARK_GAP], &d[ERASED_LOW],
                          &d[ERASED_HIGH], &d[UNCERTAIN_BELOW], &d[UNCERTAIN_ABOVE],
                          &d[SOLID_FILL], &d[REVIEW_THRESHOLD], &darkest_policy,
                          &marked_view, &n_marked_view, &resolved_view, &darkest_view,
                          &confidence_view, &rule_view, &review_view, &n_bubbles,
                          &n_fields)) {
        return NULL;
    }
    PyObject *result = NULL;
    const Py_buffer *outputs[] = {&marked_view,     &n_marked_view, &resolved_view,
                                  &darkest_view,    &confidence_view, &rule_view,
                                  &review_view};
    const char *output_names[] = {"marked", "n_marked", "resolved", "darkest",
                                  "confidence", "rule", "needs_review"};
    if (width < 1 || n_bubbles < 0 || n_fields < 0) {
        PyErr_Format(PyExc_ValueError, "invalid sizes: width %zd, %zd bubbles, %zd fields",
                     width, n_bubbles, n_fields);
        goto done;
    }
    if (check_size(&fills_view, 1, n_bubbles, 4, "fills") ||
        check_size(&counts_view, 1, n_fields, 8, "counts") ||
        check_size(&marked_view, n_fields, width, 1, "marked") ||
        check_size(&n_marked_view, 1, n_fields, 8, "n_marked") ||
        check_size(&resolved_view, 1, n_fields, 1, "resolved") ||
        check_size(&darkest_view, 1, n_fields, 8, "darkest") ||
        check_size(&confidence_view, 1, n_fields, 8, "confidence") ||
        check_size(&rule_view, 1, n_fields, 8, "rule") ||
        check_size(&review_view, 1, n_fields, 1, "needs_review")) {
        goto done;
    }
    for (int i = 0; i < 7; i++) {
        if (check_apart(outputs[i], &fills_view, "fills") ||
            check_apart(outputs[i], &counts_view, "counts")) {
            goto done;
        }
        for (int j = 0; j < i; j++) {
            if (check_apart(outputs[i], outputs[j], output_names[j])) {
                goto done;
            }
        }
    }
    const float *fills = fills_view.buf;
    const int64_t *counts = counts_view.buf;
    Py_ssize_t total = 0;
    for (Py_ssize_t f = 0; f < n_fields; f++) {
        if (counts[f] < 0 || counts[f] > width || counts[f] > n_bubbles - total) {
            PyErr_Format(PyExc_ValueError,
                         "field %zd has %lld bubbles: more than the width %zd or "
                         "than the %zd fills left",
                         f, (long long)counts[f], width, n_bubbles - total);
            goto done;
        }
        total += (Py_ssize_t)counts[f];
    }
    if (total != n_bubbles) {
        PyErr_Format(PyExc_ValueError,
                     "invalid counts: the fields have %zd bubbles in all, but there "
                     "are %zd fills",
                     total, n_bubbles);
        goto done;
    }
    int usual = isfinite(background) && isfinite(background + margin) &&
                d[UNCERTAIN_BELOW] > 0.0 && d[UNCERTAIN_ABOVE] > 0.0;
    for (int i = 0; i < N_SETTINGS; i++) {
        usual = usual && isfinite(d[i]);
    }
    for (Py_ssize_t b = 0; b < n_bubbles && usual; b++) {
        usual = isfinite(fills[b]) && !(fills[b] == 0.0f && signbit(fills[b]));
    }
    if (!usual) {
        Py_INCREF(Py_False);
        result = Py_False;
        goto done;
    }

    uint8_t *marked = marked_view.buf;
    int64_t *n_marked = n_marked_view.buf;
    uint8_t *resolved = resolved_view.buf;
    int64_t *darkest = darkest_view.buf;
    double *confidence = confidence_view.buf;
    int64_t *rule = rule_view.buf;
    uint8_t *review = review_view.buf;
    memset(marked, 0, (size_t)marked_view.len);
    const double own_cap = background + margin;
    Py_ssize_t first = 0;
    for (Py_ssize_t f = 0; f < n_fields; f++) {
        const Py_ssize_t count = (Py_ssize_t)counts[f];
        const float *values = fills + first;
        first += count;
        /* decide._relative_fills: the field's faintest bubble, capped, for
         * fields of three or more bubbles, and the sheet's background for
         * smaller ones. */
        double field_background = background;
        if (count >= 3) {
            double lowest = INFINITY;
            for (Py_ssize_t j = 0; j < count; j++) {
                lowest = (double)values[j] < lowest ? (double)values[j] : lowest;
            }
            field_background = nan_min(lowest, own_cap);
        }
        int64_t marks = 0;
        int has_unmarked = 0;
        double weakest = INFINITY;
        double strongest_blank = -INFINITY;
        double top = -INFINITY;
        double second = -INFINITY;
        int64_t top_at = 0;
        for (Py_ssize_t j = 0; j < count; j++) {
            const double rel = (double)values[j] - field_background;
            if (rel >= d[MIN_FILL]) {
                marked[f * width + j] = 1;
                marks++;
                weakest = rel < weakest ? rel : weakest;
            } else {
                has_unmarked = 1;
                strongest_blank = rel > strongest_blank ? rel : strongest_blank;
            }
            /* The two largest, as the last two of np.sort; the first
             * largest, as np.argmax. */
            if (rel > top) {
                second = top;
                top = rel;
                top_at = j;
            } else if (rel > second) {
                second = rel;
            }
        }
        const int has_mark = marks > 0;
        const double gap = top - second;
        const int is_resolved =
            marks >= 2 && gap >= d[MULTI_MARK_GAP] && darkest_policy;
        const double c_mark =
            has_mark ? unit(weakest - d[MIN_FILL], d[UNCERTAIN_ABOVE]) : 1.0;
        const double c_blank =
            has_unmarked ? unit(d[MIN_FILL] - strongest_blank, d[UNCERTAIN_BELOW]) : 1.0;
        const int use_jump = has_mark && has_unmarked && count >= 3;
        const double c_jump =
            use_jump ? unit((weakest - strongest_blank) - d[MIN_JUMP], d[UNCERTAIN_ABOVE])
                     : 1.0;
        const double c_gap =
            is_resolved ? unit(gap - d[MULTI_MARK_GAP], d[UNCERTAIN_ABOVE]) : 1.0;
        const double level = nan_min(nan_min(nan_min(c_mark, c_blank), c_jump), c_gap);
        const int low = level < d[REVIEW_THRESHOLD];
        const int marked_side_low = nan_min(c_mark, c_jump) < d[REVIEW_THRESHOLD];
        const int light = has_mark && weakest < d[SOLID_FILL];
        const int faint = has_unmarked && strongest_blank > d[ERASED_HIGH];
        const int erased = has_unmarked && strongest_blank >= d[ERASED_LOW] && !faint;
        int64_t first_rule = 6;
        if (marks >= 2) {
            first_rule = 0;
        } else if (marked_side_low) {
            first_rule = 1;
        } else if (light || faint) {
            first_rule = 2;
        } else if (low) {
            first_rule = 3;
        } else if (erased) {
            first_rule = 4;
        } else if (has_mark) {
            first_rule = 5;
        }
        n_marked[f] = marks;
        resolved[f] = (uint8_t)is_resolved;
        darkest[f] = top_at;
        confidence[f] = level;
        rule[f] = first_rule;
        review[f] = (uint8_t)(low || (marks >= 2 && !is_resolved));
    }
    Py_INCREF(Py_True);
    result = Py_True;

done:
    PyBuffer_Release(&fills_view);
    PyBuffer_Release(&counts_view);
    PyBuffer_Release(&marked_view);
    PyBuffer_Release(&n_marked_view);
    PyBuffer_Release(&resolved_view);
    PyBuffer_Release(&darkest_view);
    PyBuffer_Release(&confidence_view);
    PyBuffer_Release(&rule_view);
    PyBuffer_Release(&review_view);
    return result;
}

static PyMethodDef kernel_methods[] = {
    {"field_contrasts", field_contrasts, METH_VARARGS,
     "Score each field at each shift from an integral image (see align.py)."},
    {"bubble_fills", bubble_fills, METH_VARARGS,
     "Measure each bubble's fill from its sample grid (see measure.py)."},
    {"decide_fields", decide_fields, METH_VARARGS,
     "Decide each field's marks, confidence and reason rule (see decide.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Compiled inner loops of measuring and deciding; use omr_desktop.engine.kernels.", -1,
    kernel_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    PyObject *module = PyModule_Create(&kernel_module);
    if (module != NULL && PyModule_AddIntConstant(module, "VERSION", KERNEL_VERSION) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
