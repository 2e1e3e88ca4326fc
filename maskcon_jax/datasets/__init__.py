"""Dataset containers and loaders behind `maskcon_jax.input_pipeline`.

* `core`: `LabelHierarchy`, the in-memory `Dataset`, the `StreamingDataset`
  and the tf.data machinery both are built with.
* `builtin`: Fashion-MNIST (local files only), scikit-learn's digits and the
  synthetic test data.
* `tfds_datasets`: CIFAR-100, CIFARtoy, ImageNet32, Cars196 and Stanford
  Online Products read from prepared TensorFlow Datasets copies.
* `files`: image files on disk: the paper's SOP splits and custom data given
  as class folders or CSV lists.

Use `maskcon_jax.input_pipeline.load_dataset`; these modules import
TensorFlow only inside the functions that read data.
"""
