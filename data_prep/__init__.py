"""Converters of raw audio-video downloads (CREMA-D, AVE, UCF101-51, a manifest) to TFRecords."""
