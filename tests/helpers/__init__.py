"""What tests and benchmarks share: a real mosquitto (:mod:`.broker`), boards running ``edgec serve``
(:mod:`.boards`), an MQTT subscriber (:mod:`.mqtt`), third-party-style models and real image data
(:mod:`.models`), hostile bodies (:mod:`.bombs`), valid board messages (:mod:`.messages`) and a
headless Chromium (:mod:`.chromium`). Tests import these, never each other; benchmarks put ``tests/``
on their path for them."""
