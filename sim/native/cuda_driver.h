/* The subset of the CUDA driver API (libcuda.so.1) the simulator's programs
 * call, declared with the real signatures: the programs link against the
 * stub built from cuda_stub.c, or would against a real driver. */
#ifndef INGERO_SIM_CUDA_DRIVER_H
#define INGERO_SIM_CUDA_DRIVER_H

#include <stddef.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;

extern CUresult cuInit(unsigned int flags);
extern CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, int device);
extern CUresult cuCtxSetCurrent(CUcontext ctx);
extern CUresult cuCtxSynchronize(void);
extern CUresult cuModuleLoadData(CUmodule *module, const void *image);
extern CUresult cuModuleGetFunction(CUfunction *fn, CUmodule module, const char *name);
extern CUresult cuStreamCreate(CUstream *stream, unsigned int flags);
extern CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shared, CUstream stream, void **params, void **extra);
extern CUresult cuStreamSynchronize(CUstream stream);
extern CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytes);
extern CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes);
extern CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes);

#endif
