/* The shared gradient's per-step averaging on CPU, for kshot/native.py (loaded with ctypes).
 *
 * For each part p: the n[p] rows of d[p] floats at g[p] (a gradient, or a channels_last conv
 * gradient's output-channel blocks) are replaced by the mean of their group's rows. The arithmetic
 * is that of kshot.shared_grad.group_mean_rows_, step by step: the rows are added into zeroed group
 * sums in row order, each sum is multiplied by 1/|group|, and each row is overwritten with its
 * group's result. Each float sees the same operations in the same order as in PyTorch's
 * index_add_, mul_ and index_select, so the result is bitwise the same (compile without
 * floating-point contraction: -ffp-contract=off). A part whose g[p] is NULL is skipped.
 */
#include <stdint.h>
#include <string.h>

static void group_mean_rows(float *restrict g, int64_t n, int64_t d, const int64_t *restrict assign,
                            int64_t groups, const float *restrict inv_counts, float *restrict sums) {
  memset(sums, 0, (size_t)(groups * d) * sizeof(float));
  for (int64_t i = 0; i < n; i++) {
    float *restrict s = sums + assign[i] * d;
    const float *restrict row = g + i * d;
    for (int64_t j = 0; j < d; j++) s[j] += row[j];
  }
  for (int64_t k = 0; k < groups; k++) {
    const float c = inv_counts[k];
    float *restrict s = sums + k * d;
    for (int64_t j = 0; j < d; j++) s[j] *= c;
  }
  for (int64_t i = 0; i < n; i++) memcpy(g + i * d, sums + assign[i] * d, (size_t)d * sizeof(float));
}

void kshot_group_mean(int64_t parts, float *const *g, const int64_t *n, const int64_t *d,
                      const int64_t *const *assign, const int64_t *groups,
                      const float *const *inv_counts, float *const *sums) {
  for (int64_t p = 0; p < parts; p++)
    if (g[p] != NULL) group_mean_rows(g[p], n[p], d[p], assign[p], groups[p], inv_counts[p], sums[p]);
}
