/*
 * Compiled inner loops of bubble measuring, for omr_desktop/engine/kernels.py.
 *
 * Each function computes what the numpy code of align.py and measure.py
 * computes, bit for bit, without building the (bubbles x shifts) and
 * (bubbles x samples) index arrays that the numpy code gathers through.
 * Those arrays take 1.3 MB per template, and after a JPEG decode has evicted
 * them from the CPU caches, reading them cost more than the arithmetic.
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
#define KERNEL_VERSION 2

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

/* Return how many of values[0..count) are <= threshold. */
static Py_ssize_t count_at_most(const uint8_t *values, Py_ssize_t count, uint8_t threshold)
{
    Py_ssize_t total = 0;
    /* Byte counters let the compiler count 16 or 32 samples per instruction.
     * A chunk of 255 cannot overflow them. */
    for (Py_ssize_t start = 0; start < count; start += 255) {
        const Py_ssize_t end = start + 255 < count ? start + 255 : count;
        uint8_t chunk = 0;
        for (Py_ssize_t k = start; k < end; k++) {
            chunk += values[k] <= threshold;
        }
        total += chunk;
    }
    return total;
}

/*
 * Return the kth smallest of values[0..count): the lowest grey g with more
 * than kth values <= g, found by bisection between the smallest and the
 * largest value. Each step is one vectorised counting pass. On the 850 x 80
 * samples of a demo sheet (gcc 12 -O3, AMD EPYC) this took 36-42 us, a
 * 256-bin histogram 87-113 us, and a quickselect was slower still.
 */
static int select_kth(const uint8_t *values, Py_ssize_t count, Py_ssize_t kth)
{
    uint8_t smallest = 255;
    uint8_t largest = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        smallest = values[k] < smallest ? values[k] : smallest;
        largest = values[k] > largest ? values[k] : largest;
    }
    int low = smallest;
    int high = largest;
    while (low < high) {
        const int middle = (low + high) / 2;
        if (count_at_most(values, count, (uint8_t)middle) > kth) {
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
    uint8_t values[64 * 64];
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

static PyMethodDef kernel_methods[] = {
    {"field_contrasts", field_contrasts, METH_VARARGS,
     "Score each field at each shift from an integral image (see align.py)."},
    {"bubble_fills", bubble_fills, METH_VARARGS,
     "Measure each bubble's fill from its sample grid (see measure.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Compiled inner loops of bubble measuring; use omr_desktop.engine.kernels.", -1,
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
