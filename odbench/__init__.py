"""odbench: the MLPerf object-detection benchmark core (COCO, models, LoadGen, accuracy), free of Prefect."""
