"""cuda-python's runtime API and NVRTC, loaded only on the GPU path; shared by the engines, the kernels, the
frame rings and the NVDEC sources."""
