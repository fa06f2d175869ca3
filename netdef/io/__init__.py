"""Reading and writing Caffe's binary files: weights, mean files, solver states."""
