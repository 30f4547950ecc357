"""jaxres: image classification and semantic segmentation in JAX/Flax."""
