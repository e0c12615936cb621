"""Runtime adaptation: latency tables measured on the device the model runs on
(`latency`), the predictor that keeps a frame budget by switching width, scale and torch threads
(`adaptive`), how many cores other processes keep busy (`contention`), and the stream benchmark
that tries it under load (`stream`)."""
