"""The marketer's dashboard: one page over the metrics API, with Apache ECharts for its charts."""
