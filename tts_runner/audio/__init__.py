"""Audio as samples and as files: the speech codec's clock, signal processing, file formats, sinks."""
