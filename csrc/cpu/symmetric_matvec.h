// y = S x for the symmetric S of a plain Lanczos step, reading only S's upper triangle.
//
// A product with S streams S through the cache once a step; a symmetric S holds each entry
// twice. Row i of the upper triangle gives both y_i += S_ij x_j and y_j += S_ij x_i (j > i),
// so the own kernel reads half the bytes of the row-by-row product (matvec.h) for twice its
// multiply-adds. The rows go in chunks of equal triangle area, fixed by d alone; each chunk
// sums its column terms into a buffer of its own, and y_i = (row i's own terms) + the chunks'
// buffers in chunk order: bitwise the same result at any thread count. The paired product
// reads the triangle once for two vectors, and each vector's result is bitwise the single
// product's.
//
// It pays where S streams from memory or the outer cache; smaller S are multiplied row by row
// (triangle_pays). AMD EPYC Zen 3, 2 threads, own kernels: a float64 top_eigh at d = 2048
// took 1.23-1.59x less time with the triangle, at d = 768 1.03-1.24x less; a float32 one at
// d = 768 (2.2 MiB) 0.91-0.99x, so that size stays on the row kernel.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "cpu/matvec.h"

namespace condnum {

// Whether the triangle kernel is worth its extra multiply-adds for S: S of 4 MiB or more.
bool triangle_pays(const at::Tensor& S);

class SymmetricProduct {
 public:
  // S: (d, d) contiguous, symmetric. With kind = own, triangle = true and a CPU with AVX2 and
  // FMA, the triangle kernel (only S's upper triangle is read; its workspace is allocated
  // here, once per solve); otherwise matvec.h's product of that kind, which reads all of S.
  SymmetricProduct(const at::Tensor& S, Matvec kind, bool triangle);

  // y = S x; x, y: (d,) contiguous, S's dtype.
  void operator()(at::Tensor& y, const at::Tensor& x);
  // y1 = S x1, y2 = S x2 in one pass over the triangle (own) or two products (blas).
  void operator()(at::Tensor& y1, at::Tensor& y2, const at::Tensor& x1, const at::Tensor& x2);

 private:
  template <int K>
  void own(const at::Tensor* const (&x)[K], at::Tensor* const (&y)[K]);

  at::Tensor S_;
  Matvec kind_;
  std::vector<int64_t> bounds_;  // chunk c holds rows [bounds_[c], bounds_[c + 1])
  at::Tensor columns_;           // (chunks, 2, d): each chunk's column terms
};

}  // namespace condnum
